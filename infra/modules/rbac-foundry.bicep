// Keyless calls to Azure AI Foundry / Azure OpenAI: lets the app's identity call a Foundry
// (AIServices) or Azure OpenAI resource with an Entra token (gateway config
// `"auth": {"type": "entra"}`; the default scope for those hosts is
// https://cognitiveservices.azure.com/.default). Deployed with
// `scope: resourceGroup(<the resource's resource group>)`.
// Cognitive Services OpenAI User covers the OpenAI data actions (Azure OpenAI deployments, the v1
// API); Cognitive Services User also covers the other models a Foundry resource serves (DeepSeek,
// Llama, Mistral through the v1 or the model inference API).

@description('Name of the existing Azure AI Foundry (AIServices) or Azure OpenAI resource.')
param accountName string

@description('Principal (object) ID of the app\'s user-assigned managed identity.')
param identityPrincipalId string

@description('The data-plane role the identity gets on the resource.')
@allowed([
  'Cognitive Services OpenAI User'
  'Cognitive Services User'
])
param roleName string = 'Cognitive Services OpenAI User'

// Built-in role definition IDs (the same in every tenant).
var openAiUserRoleId = '5e0bd9bd-7b93-4f28-af87-19fc36ad61bd'
var cognitiveServicesUserRoleId = 'a97b65f3-24c7-4388-baec-2e87135dc908'

resource account 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = {
  name: accountName
}

resource openAiUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (roleName == 'Cognitive Services OpenAI User') {
  name: guid(account.id, identityPrincipalId, openAiUserRoleId)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', openAiUserRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource cognitiveServicesUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (roleName == 'Cognitive Services User') {
  name: guid(account.id, identityPrincipalId, cognitiveServicesUserRoleId)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', cognitiveServicesUserRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}
