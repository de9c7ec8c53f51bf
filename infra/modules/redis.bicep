// Optional Azure Managed Redis for callers' limits shared by every instance (docs/callers.md):
// Microsoft Entra authentication only (access keys disabled), TLS only, and an access policy
// assignment for the app's identity. With vnetEnabled, a private endpoint and no public access.

@description('Azure region of the cache.')
param location string

@description('Tags put on every resource.')
param tags object = {}

@description('Name of the Azure Managed Redis instance (its host name: <name>.<region>.redis.azure.net).')
param redisName string

@description('Azure Managed Redis SKU: Balanced_B0 (smallest) and up. Limits keep a few keys per active caller.')
param skuName string

@description('Object ID of the app\'s managed identity: gets the default access policy on the database.')
param identityPrincipalId string

@description('True: reachable only through a private endpoint in privateEndpointSubnetId.')
param vnetEnabled bool = false

@description('With vnetEnabled: the subnet of the private endpoint.')
param privateEndpointSubnetId string = ''

@description('With vnetEnabled: the virtual network the private DNS zone is linked to.')
param vnetId string = ''

@description('Prefix of private endpoint names.')
param privateEndpointPrefix string = 'pep-'

resource redis 'Microsoft.Cache/redisEnterprise@2025-07-01' = {
  name: redisName
  location: location
  tags: tags
  sku: {
    name: skuName
  }
  properties: {
    minimumTlsVersion: '1.2'
    publicNetworkAccess: vnetEnabled ? 'Disabled' : 'Enabled'
  }
}

resource database 'Microsoft.Cache/redisEnterprise/databases@2025-07-01' = {
  parent: redis
  name: 'default'
  properties: {
    // Entra ID only: the app authenticates with its managed identity (redis-entraid).
    accessKeysAuthentication: 'Disabled'
    clientProtocol: 'Encrypted'
    port: 10000
    // One endpoint for a non-cluster client; a caller's keys share a hash tag anyway.
    clusteringPolicy: 'EnterpriseCluster'
    // Limits' keys all expire by themselves.
    evictionPolicy: 'VolatileLRU'
  }
}

resource appAccess 'Microsoft.Cache/redisEnterprise/databases/accessPolicyAssignments@2025-07-01' = {
  parent: database
  name: 'gatewayapp'
  properties: {
    accessPolicyName: 'default'
    user: {
      objectId: identityPrincipalId
    }
  }
}

resource dnsZone 'Microsoft.Network/privateDnsZones@2020-06-01' = if (vnetEnabled) {
  name: 'privatelink.redis.azure.net'
  location: 'global'
  tags: tags
}

resource dnsLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = if (vnetEnabled) {
  parent: dnsZone
  name: '${redisName}-link'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnetId
    }
  }
}

resource privateEndpoint 'Microsoft.Network/privateEndpoints@2024-05-01' = if (vnetEnabled) {
  name: '${privateEndpointPrefix}${redisName}-redis'
  location: location
  tags: tags
  properties: {
    subnet: {
      id: privateEndpointSubnetId
    }
    privateLinkServiceConnections: [
      {
        name: '${redisName}-redis'
        properties: {
          privateLinkServiceId: redis.id
          groupIds: [
            'redisEnterprise'
          ]
        }
      }
    ]
  }
}

resource dnsZoneGroup 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = if (vnetEnabled) {
  parent: privateEndpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: 'redis'
        properties: {
          privateDnsZoneId: dnsZone.id
        }
      }
    ]
  }
}

output redisName string = redis.name
output redisHostName string = redis.properties.hostName
// The configuration's callers.limits.store.url (no secret: authentication is Entra ID only).
output redisUrl string = 'rediss://${redis.properties.hostName}:10000'
