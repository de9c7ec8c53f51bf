// Optional private networking (main.bicep deploys this only when vnetEnabled is true):
// a VNet with an app-integration subnet delegated to Microsoft.App/environments (what Flex
// Consumption requires; the subscription needs the Microsoft.App resource provider registered)
// and a private-endpoint subnet; private endpoints + private DNS zones for the host storage
// (blob: the only storage service the app uses) and, when this deployment created it, the Key Vault.

@description('Azure region of the network resources.')
param location string

@description('Tags put on every resource.')
param tags object = {}

@description('Name of the virtual network.')
param vnetName string

@description('Address space of the virtual network.')
param vnetAddressPrefix string = '10.0.0.0/16'

@description('Subnet the function app integrates with (delegated to Microsoft.App/environments; /27 or larger; no underscore in its name).')
param appSubnetPrefix string = '10.0.1.0/24'

@description('Subnet that holds the private endpoints.')
param privateEndpointSubnetPrefix string = '10.0.2.0/24'

@description('Prefix of the private endpoint names.')
param privateEndpointPrefix string = 'pep-'

@description('Resource ID of the host storage account that gets a blob private endpoint.')
param storageAccountId string

@description('Resource ID of the Key Vault that gets a private endpoint. Empty: none (for example an existing vault managed elsewhere).')
param keyVaultId string = ''

var appSubnetName = 'snet-app'
var privateEndpointSubnetName = 'snet-pe'
var storageGroups = [
  'blob'
]
var storageAccountName = last(split(storageAccountId, '/'))

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: vnetName
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        vnetAddressPrefix
      ]
    }
    subnets: [
      {
        name: appSubnetName
        properties: {
          addressPrefix: appSubnetPrefix
          privateEndpointNetworkPolicies: 'Disabled'
          privateLinkServiceNetworkPolicies: 'Enabled'
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: privateEndpointSubnetName
        properties: {
          addressPrefix: privateEndpointSubnetPrefix
          privateEndpointNetworkPolicies: 'Disabled'
          privateLinkServiceNetworkPolicies: 'Enabled'
        }
      }
    ]
  }
}

resource storageDnsZones 'Microsoft.Network/privateDnsZones@2020-06-01' = [for group in storageGroups: {
  name: 'privatelink.${group}.${environment().suffixes.storage}'
  location: 'global'
  tags: tags
}]

resource storageDnsLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = [for (group, i) in storageGroups: {
  parent: storageDnsZones[i]
  name: '${vnetName}-link'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnet.id
    }
  }
}]

resource storagePrivateEndpoints 'Microsoft.Network/privateEndpoints@2024-05-01' = [for (group, i) in storageGroups: {
  name: '${privateEndpointPrefix}${storageAccountName}-${group}'
  location: location
  tags: tags
  properties: {
    subnet: {
      id: vnet.properties.subnets[1].id
    }
    privateLinkServiceConnections: [
      {
        name: '${storageAccountName}-${group}'
        properties: {
          privateLinkServiceId: storageAccountId
          groupIds: [
            group
          ]
        }
      }
    ]
  }
}]

resource storageDnsZoneGroups 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = [for (group, i) in storageGroups: {
  parent: storagePrivateEndpoints[i]
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: group
        properties: {
          privateDnsZoneId: storageDnsZones[i].id
        }
      }
    ]
  }
}]

// Key Vault (public Azure cloud zone name).
resource keyVaultDnsZone 'Microsoft.Network/privateDnsZones@2020-06-01' = if (!empty(keyVaultId)) {
  name: 'privatelink.vaultcore.azure.net'
  location: 'global'
  tags: tags
}

resource keyVaultDnsLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = if (!empty(keyVaultId)) {
  parent: keyVaultDnsZone
  name: '${vnetName}-link'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnet.id
    }
  }
}

resource keyVaultPrivateEndpoint 'Microsoft.Network/privateEndpoints@2024-05-01' = if (!empty(keyVaultId)) {
  name: '${privateEndpointPrefix}${last(split(keyVaultId, '/'))}-vault'
  location: location
  tags: tags
  properties: {
    subnet: {
      id: vnet.properties.subnets[1].id
    }
    privateLinkServiceConnections: [
      {
        name: '${last(split(keyVaultId, '/'))}-vault'
        properties: {
          privateLinkServiceId: keyVaultId
          groupIds: [
            'vault'
          ]
        }
      }
    ]
  }
}

resource keyVaultDnsZoneGroup 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = if (!empty(keyVaultId)) {
  parent: keyVaultPrivateEndpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: 'vault'
        properties: {
          privateDnsZoneId: keyVaultDnsZone.id
        }
      }
    ]
  }
}

output vnetId string = vnet.id
output appSubnetId string = vnet.properties.subnets[0].id
output privateEndpointSubnetId string = vnet.properties.subnets[1].id
