// The Azure ML chat gateway: a Python function app on Flex Consumption that reads Azure ML
// endpoint keys from Key Vault with its user-assigned managed identity.
//
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.bicepparam
//
// (infra/main.sub.bicep creates the resource group too.) Every secret stays out of this
// template: endpoint keys are put into the vault afterwards with `az keyvault secret set`.
targetScope = 'resourceGroup'

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

@description('Short name of the environment (e.g. dev, prod): letters, digits and hyphens. Part of every resource name and of the uniqueString() token, and the azd-env-name tag.')
@minLength(1)
@maxLength(20)
param environmentName string

@description('Azure region of every resource; it must offer Flex Consumption with the chosen Python version (az functionapp list-flexconsumption-locations).')
param location string = resourceGroup().location

@description('Python version of the Flex Consumption runtime. 3.12 and 3.13 both support the HTTP streams the gateway needs.')
@allowed([
  '3.12'
  '3.13'
])
param pythonVersion string = '3.12'

@description('Most instances the app scales out to. This is the spending ceiling: under load or abuse, Flex Consumption never runs (and bills) more instances than this.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of each instance, in MB: 512, 2048 or 4096 (CPU and bandwidth scale with it).')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Concurrent HTTP requests per instance (each open stream counts); 0 keeps the platform default for the instance size.')
@minValue(0)
@maxValue(1000)
param httpPerInstanceConcurrency int = 0

@description('Always-ready (pre-started, billed even when idle) instances for the HTTP functions, against cold starts; 0 scales to zero. With zoneRedundant, at least 2 (see there).')
@minValue(0)
@maxValue(20)
param alwaysReadyInstances int = 0

@description('Zone-redundant Flex Consumption plan, only in regions where Flex supports availability zones. It costs more than the plan: the host storage becomes Standard_ZRS (whatever storageSkuName says), and the platform keeps at least 2 always-ready instances of the HTTP functions, billed even when idle (the app never scales to zero), so alwaysReadyInstances below 2 is deployed as 2.')
param zoneRedundant bool = false

@description('Replication of the host storage account when zoneRedundant is false: Standard_LRS (every region) or Standard_ZRS (regions with availability zones). Zone redundancy always uses Standard_ZRS.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
])
param storageSkuName string = 'Standard_LRS'

@description('True: VNet integration for the app and private endpoints for storage and the vault, whose public network access is then disabled.')
param vnetEnabled bool = false

@description('Browser origins the platform\'s CORS allows, e.g. [\'https://chat.example.com\']. Never \'*\' (a test checks the defaults). Empty: no cross-origin browser calls.')
param allowedCorsOrigins array = []

@description('True: App Service Authentication (Easy Auth) with Microsoft Entra ID: every route except /api/health needs a bearer token (401 otherwise).')
param enableEasyAuth bool = false

@description('Easy Auth: client (application) ID of the Entra ID app registration that represents the gateway API. Required when enableEasyAuth is true.')
param easyAuthClientId string = ''

@description('Easy Auth: token audiences accepted. Empty: api://<easyAuthClientId>.')
param easyAuthAllowedAudiences array = []

@description('Easy Auth: client IDs of the front-end applications allowed to call the gateway. Empty: any application of the tenant with a token for the audience.')
param easyAuthAllowedApplications array = []

@description('The gateway configuration (app setting GATEWAY_CONFIG, serialized as JSON): endpoint names, URLs, api types, content formatters and Key Vault secret NAMES. Never a key: use "auth": {"type": "key_vault", "secret_name": ...}. See the README, section Configuration.')
param gatewayConfig object

@description('Optional object ID of the operator (user, group or service principal) who puts the endpoint keys into the vault: gets Key Vault Secrets Officer on a vault this deployment creates. Empty: no operator role.')
param principalId string = ''

@description('Kind of principalId.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param principalType string = 'User'

@description('Name of an existing Key Vault to use instead of creating one. Only the app identity\'s Key Vault Secrets User role is created on it. Empty: create a vault.')
param existingKeyVaultName string = ''

@description('Resource group of existingKeyVaultName; ignored when a vault is created here (existingKeyVaultName empty). Empty: this resource group.')
param existingKeyVaultResourceGroup string = ''

@description('With vnetEnabled: public IP addresses or CIDR ranges (e.g. [\'203.0.113.7/32\']) let through the firewall of a vault created here, for an operator who sets secrets from outside the VNet. Empty: the vault has no public endpoint at all. The rules live in the parameters, so a later deployment keeps or removes them only as its parameters say.')
param keyVaultAllowedIpRules array = []

@description('Optional name of an existing Azure Machine Learning workspace whose managed online endpoints use aad_token auth (gateway "auth": {"type": "entra"}): the app identity gets AzureML Data Scientist on it. Empty: no role.')
param amlWorkspaceName string = ''

@description('Resource group of amlWorkspaceName. Empty: this resource group.')
param amlWorkspaceResourceGroup string = ''

@description('Optional name of an existing Azure AI Foundry (AIServices) or Azure OpenAI resource called with Entra tokens (gateway "auth": {"type": "entra"}): the app identity gets foundryRoleName on it. Empty: no role.')
param foundryAccountName string = ''

@description('Resource group of foundryAccountName. Empty: this resource group.')
param foundryAccountResourceGroup string = ''

@description('Role on foundryAccountName: Cognitive Services OpenAI User (OpenAI models) or Cognitive Services User (also the other models of a Foundry resource).')
@allowed([
  'Cognitive Services OpenAI User'
  'Cognitive Services User'
])
param foundryRoleName string = 'Cognitive Services OpenAI User'

@description('True: an Azure Managed Redis for callers\' limits shared by every instance (gateway callers.limits.store, docs/callers.md): Entra ID authentication only, the app identity gets its default access policy; with vnetEnabled, a private endpoint. Its URL is the output REDIS_URL.')
param enableRedis bool = false

@description('Azure Managed Redis SKU when enableRedis: Balanced_B0 (the smallest) and up.')
param redisSkuName string = 'Balanced_B0'

@description('Days the Log Analytics workspace keeps logs.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

@description('Optional name of the function app (globally unique; its host name). Empty: func-<environmentName>-<token>.')
param functionAppName string = ''

@description('Optional name of the Key Vault created here (3-24 characters, globally unique). Empty: kv-<token>.')
param keyVaultName string = ''

@description('Optional name of the host storage account (3-24 lowercase letters and digits, globally unique). Empty: st<token>.')
param storageAccountName string = ''

@description('Tags added to every resource (azd-env-name is always added).')
param tags object = {}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName, location))
var allTags = union(tags, {
  'azd-env-name': environmentName
})

var appName = !empty(functionAppName) ? functionAppName : '${abbrs.webSitesFunctions}${environmentName}-${resourceToken}'
var planName = '${abbrs.webServerFarms}${environmentName}-${resourceToken}'
var identityName = '${abbrs.managedIdentityUserAssignedIdentities}${environmentName}-${resourceToken}'
var logAnalyticsName = '${abbrs.operationalInsightsWorkspaces}${environmentName}-${resourceToken}'
var applicationInsightsName = '${abbrs.insightsComponents}${environmentName}-${resourceToken}'
var vnetName = '${abbrs.networkVirtualNetworks}${environmentName}-${resourceToken}'
var hostStorageName = !empty(storageAccountName) ? storageAccountName : '${abbrs.storageStorageAccounts}${resourceToken}'
var newKeyVaultName = !empty(keyVaultName) ? keyVaultName : '${abbrs.keyVaultVaults}${resourceToken}'
var redisName = '${abbrs.cacheRedis}${environmentName}-${resourceToken}'
var deploymentContainerName = toLower('app-package-${take(appName, 32)}-${take(resourceToken, 7)}')

var createKeyVault = empty(existingKeyVaultName)
// Another resource group only for an existing vault: a vault created here is in this one.
var keyVaultResourceGroupName = (createKeyVault || empty(existingKeyVaultResourceGroup)) ? resourceGroup().name : existingKeyVaultResourceGroup
// Zone redundancy needs zone-redundant host storage, and the platform keeps two always-ready
// instances per group anyway: deploy what will be billed, visibly.
var hostStorageSkuName = zoneRedundant ? 'Standard_ZRS' : storageSkuName
var alwaysReadyCount = zoneRedundant ? max(alwaysReadyInstances, 2) : alwaysReadyInstances
var amlResourceGroupName = empty(amlWorkspaceResourceGroup) ? resourceGroup().name : amlWorkspaceResourceGroup
var foundryResourceGroupName = empty(foundryAccountResourceGroup) ? resourceGroup().name : foundryAccountResourceGroup

// ---------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------

// The app's identity exists before the app, so its roles can be granted before the first start.
resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: identityName
  location: location
  tags: allTags
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring-${resourceToken}'
  params: {
    location: location
    tags: allTags
    logAnalyticsName: logAnalyticsName
    applicationInsightsName: applicationInsightsName
    retentionInDays: logRetentionInDays
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage-${resourceToken}'
  params: {
    location: location
    tags: allTags
    storageAccountName: hostStorageName
    deploymentContainerName: deploymentContainerName
    skuName: hostStorageSkuName
    vnetEnabled: vnetEnabled
  }
}

module keyVault 'modules/keyvault.bicep' = if (createKeyVault) {
  name: 'keyvault-${resourceToken}'
  params: {
    location: location
    tags: allTags
    keyVaultName: newKeyVaultName
    vnetEnabled: vnetEnabled
    allowedIpRules: keyVaultAllowedIpRules
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

// Only read (inside a condition) when existingKeyVaultName is set.
resource existingKeyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: existingKeyVaultName
  scope: resourceGroup(keyVaultResourceGroupName)
}

module network 'modules/network.bicep' = if (vnetEnabled) {
  name: 'network-${resourceToken}'
  params: {
    location: location
    tags: allTags
    vnetName: vnetName
    privateEndpointPrefix: abbrs.networkPrivateEndpoints
    storageAccountId: storage.outputs.storageAccountId
    // `!`: each read of a conditional module's outputs is guarded by that module's condition.
    keyVaultId: createKeyVault ? keyVault!.outputs.keyVaultId : ''
  }
}

module redis 'modules/redis.bicep' = if (enableRedis) {
  name: 'redis-${resourceToken}'
  params: {
    location: location
    tags: allTags
    redisName: redisName
    skuName: redisSkuName
    identityPrincipalId: identity.properties.principalId
    vnetEnabled: vnetEnabled
    privateEndpointSubnetId: vnetEnabled ? network!.outputs.privateEndpointSubnetId : ''
    vnetId: vnetEnabled ? network!.outputs.vnetId : ''
    privateEndpointPrefix: abbrs.networkPrivateEndpoints
  }
}

module rbac 'modules/rbac.bicep' = {
  name: 'rbac-${resourceToken}'
  params: {
    identityPrincipalId: identity.properties.principalId
    storageAccountName: storage.outputs.storageAccountName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
  }
}

// A module scoped to the vault's resource group: also works for an existing vault elsewhere.
module keyVaultAccess 'modules/rbac-keyvault.bicep' = {
  name: 'rbac-keyvault-${resourceToken}'
  scope: resourceGroup(keyVaultResourceGroupName)
  params: {
    keyVaultName: createKeyVault ? keyVault!.outputs.keyVaultName : existingKeyVaultName
    identityPrincipalId: identity.properties.principalId
    operatorPrincipalId: createKeyVault ? principalId : ''
    operatorPrincipalType: principalType
  }
}

module amlAccess 'modules/rbac-aml.bicep' = if (!empty(amlWorkspaceName)) {
  name: 'rbac-aml-${resourceToken}'
  scope: resourceGroup(amlResourceGroupName)
  params: {
    amlWorkspaceName: amlWorkspaceName
    identityPrincipalId: identity.properties.principalId
  }
}

module foundryAccess 'modules/rbac-foundry.bicep' = if (!empty(foundryAccountName)) {
  name: 'rbac-foundry-${resourceToken}'
  scope: resourceGroup(foundryResourceGroupName)
  params: {
    accountName: foundryAccountName
    identityPrincipalId: identity.properties.principalId
    roleName: foundryRoleName
  }
}

module functionApp 'modules/function.bicep' = {
  name: 'function-${resourceToken}'
  params: {
    location: location
    tags: allTags
    planName: planName
    functionAppName: appName
    identityId: identity.id
    identityClientId: identity.properties.clientId
    storageAccountName: storage.outputs.storageAccountName
    deploymentContainerName: storage.outputs.deploymentContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    keyVaultUri: createKeyVault ? keyVault!.outputs.keyVaultUri : existingKeyVault.properties.vaultUri
    gatewayConfig: gatewayConfig
    pythonVersion: pythonVersion
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    alwaysReadyInstances: alwaysReadyCount
    zoneRedundant: zoneRedundant
    allowedCorsOrigins: allowedCorsOrigins
    enableEasyAuth: enableEasyAuth
    easyAuthClientId: easyAuthClientId
    easyAuthAllowedAudiences: easyAuthAllowedAudiences
    easyAuthAllowedApplications: easyAuthAllowedApplications
    appSubnetId: vnetEnabled ? network!.outputs.appSubnetId : ''
  }
  // Every role of the identity exists before the app starts (storage, telemetry, vault, AML, Foundry).
  dependsOn: [
    rbac
    keyVaultAccess
    amlAccess
    foundryAccess
  ]
}

// ---------------------------------------------------------------------------------------------
// Outputs (no secrets, no keys)
// ---------------------------------------------------------------------------------------------

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = resourceGroup().name
output AZURE_FUNCTION_NAME string = functionApp.outputs.functionAppName
output AZURE_FUNCTION_URL string = 'https://${functionApp.outputs.defaultHostName}/api'
output AZURE_CLIENT_ID string = identity.properties.clientId
output AZURE_PRINCIPAL_ID string = identity.properties.principalId
output KEY_VAULT_NAME string = createKeyVault ? keyVault!.outputs.keyVaultName : existingKeyVaultName
output KEY_VAULT_URL string = createKeyVault ? keyVault!.outputs.keyVaultUri : existingKeyVault.properties.vaultUri
output REDIS_URL string = enableRedis ? redis!.outputs.redisUrl : ''
