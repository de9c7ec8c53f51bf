// The vault that holds the Azure ML endpoint keys. RBAC authorization only (no access policies),
// recoverable (soft delete 90 days + purge protection), not usable by VMs/ARM/disk encryption.
// Secret values are never declared here: operators set them with `az keyvault secret set`.
// Role assignments on the vault are in rbac-keyvault.bicep (it also serves an existing vault).

@description('Azure region of the vault.')
param location string

@description('Tags put on every resource.')
param tags object = {}

@description('Vault name: 3-24 letters, digits and hyphens, globally unique. Stays reserved for 90 days after deletion (purge protection).')
@minLength(3)
@maxLength(24)
param keyVaultName string

@description('True: the vault is reachable only through its private endpoint (network.bicep), and from allowedIpRules.')
param vnetEnabled bool = false

@description('With vnetEnabled: public IP addresses or CIDR ranges let through the firewall (an operator setting secrets from outside the VNet). Empty: no public endpoint at all.')
param allowedIpRules array = []

@description('Resource ID of the Log Analytics workspace that receives the vault\'s audit logs.')
param logAnalyticsWorkspaceId string

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109:Public endpoint stays open (every call needs an Entra ID token and an RBAC role) unless vnetEnabled, which sets defaultAction Deny; checkov cannot evaluate the ternary.
  // checkov:skip=CKV_AZURE_189:Public network access is Disabled when vnetEnabled; without VNet integration Flex Consumption egress is not a trusted service, so the vault must stay reachable, guarded by RBAC.
  name: keyVaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForTemplateDeployment: false
    enabledForDiskEncryption: false
    // 'Disabled' would override every firewall rule: the public endpoint opens only for the
    // listed addresses, everyone else is denied by the firewall.
    publicNetworkAccess: (vnetEnabled && empty(allowedIpRules)) ? 'Disabled' : 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: vnetEnabled ? 'Deny' : 'Allow'
      ipRules: [for address in (vnetEnabled ? allowedIpRules : []): {
        value: address
      }]
      virtualNetworkRules: []
    }
  }
}

// Who read which secret, and who changed the vault: to the workspace.
resource keyVaultDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: keyVault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

output keyVaultName string = keyVault.name
output keyVaultId string = keyVault.id
output keyVaultUri string = keyVault.properties.vaultUri
