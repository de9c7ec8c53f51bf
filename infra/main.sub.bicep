// Subscription-scope entry point: creates the resource group, then deploys main.bicep into it.
//
//   az deployment sub create -l <region> -f infra/main.sub.bicep -p infra/main.sub.bicepparam
//
// Every parameter except resourceGroupName is passed through to main.bicep unchanged; see its
// descriptions there.
targetScope = 'subscription'

@description('Short name of the environment (e.g. dev, prod): letters, digits and hyphens. Part of every resource name.')
@minLength(1)
@maxLength(20)
param environmentName string

@description('Azure region of the resource group and every resource; it must offer Flex Consumption with the chosen Python version.')
param location string

@description('Name of the resource group to create (or update). Empty: rg-<environmentName>.')
param resourceGroupName string = ''

@description('Python version of the Flex Consumption runtime.')
@allowed([
  '3.12'
  '3.13'
])
param pythonVersion string = '3.12'

@description('Most instances the app scales out to: the spending ceiling.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of each instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Concurrent HTTP requests per instance; 0 keeps the platform default.')
@minValue(0)
@maxValue(1000)
param httpPerInstanceConcurrency int = 0

@description('Always-ready (billed) instances for the HTTP functions; 0 scales to zero. With zoneRedundant, at least 2.')
@minValue(0)
@maxValue(20)
param alwaysReadyInstances int = 0

@description('Zone-redundant Flex Consumption plan (regions with availability zones only). Costs more: Standard_ZRS host storage, and at least 2 always-ready instances billed even when idle (see main.bicep).')
param zoneRedundant bool = false

@description('Replication of the host storage account when zoneRedundant is false (zone redundancy uses Standard_ZRS).')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
])
param storageSkuName string = 'Standard_LRS'

@description('True: VNet integration and private endpoints for storage and the vault.')
param vnetEnabled bool = false

@description('Browser origins the platform\'s CORS allows. Never \'*\'.')
param allowedCorsOrigins array = []

@description('True: Easy Auth with Microsoft Entra ID (bearer tokens; /api/health stays anonymous).')
param enableEasyAuth bool = false

@description('Easy Auth: client ID of the gateway API\'s app registration.')
param easyAuthClientId string = ''

@description('Easy Auth: accepted token audiences. Empty: api://<easyAuthClientId>.')
param easyAuthAllowedAudiences array = []

@description('Easy Auth: client IDs of the front-end applications allowed to call. Empty: any.')
param easyAuthAllowedApplications array = []

@description('The gateway configuration (GATEWAY_CONFIG): endpoints and Key Vault secret NAMES, never keys.')
param gatewayConfig object

@description('Optional object ID of the operator who gets Key Vault Secrets Officer on the new vault.')
param principalId string = ''

@description('Kind of principalId.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param principalType string = 'User'

@description('Name of an existing Key Vault to use instead of creating one.')
param existingKeyVaultName string = ''

@description('Resource group of existingKeyVaultName; ignored when a vault is created. Empty: the resource group created here.')
param existingKeyVaultResourceGroup string = ''

@description('With vnetEnabled: public IP addresses or CIDR ranges let through the firewall of a vault created here (see main.bicep). Empty: no public endpoint.')
param keyVaultAllowedIpRules array = []

@description('Optional Azure ML workspace whose aad_token endpoints the app may score (AzureML Data Scientist).')
param amlWorkspaceName string = ''

@description('Resource group of amlWorkspaceName. Empty: the resource group created here.')
param amlWorkspaceResourceGroup string = ''

@description('Optional Azure AI Foundry or Azure OpenAI resource the app may call with Entra tokens (foundryRoleName).')
param foundryAccountName string = ''

@description('Resource group of foundryAccountName. Empty: the resource group created here.')
param foundryAccountResourceGroup string = ''

@description('Role on foundryAccountName: Cognitive Services OpenAI User or Cognitive Services User.')
@allowed([
  'Cognitive Services OpenAI User'
  'Cognitive Services User'
])
param foundryRoleName string = 'Cognitive Services OpenAI User'

@description('True: an Azure Managed Redis for callers\' limits (Entra ID only; private endpoint with vnetEnabled).')
param enableRedis bool = false

@description('Azure Managed Redis SKU when enableRedis.')
param redisSkuName string = 'Balanced_B0'

@description('Days the Log Analytics workspace keeps logs.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

@description('Optional name of the function app. Empty: generated.')
param functionAppName string = ''

@description('Optional name of the new Key Vault. Empty: generated.')
param keyVaultName string = ''

@description('Optional name of the host storage account. Empty: generated.')
param storageAccountName string = ''

@description('Tags added to the resource group and every resource.')
param tags object = {}

var abbrs = loadJsonContent('abbreviations.json')
var rgName = !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
var allTags = union(tags, {
  'azd-env-name': environmentName
})

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: rgName
  location: location
  tags: allTags
}

module gateway 'main.bicep' = {
  name: 'gateway-${environmentName}'
  scope: rg
  params: {
    environmentName: environmentName
    location: location
    pythonVersion: pythonVersion
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    alwaysReadyInstances: alwaysReadyInstances
    zoneRedundant: zoneRedundant
    storageSkuName: storageSkuName
    vnetEnabled: vnetEnabled
    allowedCorsOrigins: allowedCorsOrigins
    enableEasyAuth: enableEasyAuth
    easyAuthClientId: easyAuthClientId
    easyAuthAllowedAudiences: easyAuthAllowedAudiences
    easyAuthAllowedApplications: easyAuthAllowedApplications
    gatewayConfig: gatewayConfig
    principalId: principalId
    principalType: principalType
    existingKeyVaultName: existingKeyVaultName
    existingKeyVaultResourceGroup: existingKeyVaultResourceGroup
    keyVaultAllowedIpRules: keyVaultAllowedIpRules
    amlWorkspaceName: amlWorkspaceName
    amlWorkspaceResourceGroup: amlWorkspaceResourceGroup
    foundryAccountName: foundryAccountName
    foundryAccountResourceGroup: foundryAccountResourceGroup
    foundryRoleName: foundryRoleName
    enableRedis: enableRedis
    redisSkuName: redisSkuName
    logRetentionInDays: logRetentionInDays
    functionAppName: functionAppName
    keyVaultName: keyVaultName
    storageAccountName: storageAccountName
    tags: tags
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = gateway.outputs.AZURE_TENANT_ID
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_NAME string = gateway.outputs.AZURE_FUNCTION_NAME
output AZURE_FUNCTION_URL string = gateway.outputs.AZURE_FUNCTION_URL
output AZURE_CLIENT_ID string = gateway.outputs.AZURE_CLIENT_ID
output AZURE_PRINCIPAL_ID string = gateway.outputs.AZURE_PRINCIPAL_ID
output KEY_VAULT_NAME string = gateway.outputs.KEY_VAULT_NAME
output KEY_VAULT_URL string = gateway.outputs.KEY_VAULT_URL
output REDIS_URL string = gateway.outputs.REDIS_URL
