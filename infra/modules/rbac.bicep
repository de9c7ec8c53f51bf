// Role assignments of the app's user-assigned identity on the resources of this resource group,
// each scoped to the single resource it needs, never to the resource group. main.bicep makes the
// function app depend on this module, so the roles exist before the app first starts.
// (Key Vault roles: rbac-keyvault.bicep; Azure ML workspace role: rbac-aml.bicep.)

@description('Principal (object) ID of the app\'s user-assigned managed identity.')
param identityPrincipalId string

@description('Name of the host storage account (AzureWebJobsStorage and the deployment container).')
param storageAccountName string

@description('Name of the Application Insights component the app sends telemetry to.')
param applicationInsightsName string

// Built-in role definition IDs (the same in every tenant).
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Host storage: blobs only (leases, keys, the deployment package), as in Microsoft's Flex
// Consumption quickstart. Queue and table roles serve non-HTTP triggers and Durable Functions;
// this app has only HTTP triggers. (Without table access the host skips writing its diagnostic
// events to the account; they also reach Application Insights.)
resource storageBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identityPrincipalId, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Telemetry with Entra ID auth (the component has local auth disabled).
resource monitoringMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, identityPrincipalId, roles.monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}
