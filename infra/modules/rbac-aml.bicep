// Keyless scoring: lets the app's identity call Azure ML managed online endpoints whose auth mode
// is `aad_token` (gateway config `"auth": {"type": "entra"}`). Deployed with
// `scope: resourceGroup(<the workspace's resource group>)`. The built-in role AzureML Data
// Scientist includes Microsoft.MachineLearningServices/workspaces/onlineEndpoints/score/action;
// a custom role with only that action is tighter if your organisation allows custom roles.

@description('Name of the existing Azure Machine Learning workspace that hosts the online endpoints.')
param amlWorkspaceName string

@description('Principal (object) ID of the app\'s user-assigned managed identity.')
param identityPrincipalId string

// Built-in role definition ID (the same in every tenant): AzureML Data Scientist.
var amlDataScientistRoleId = 'f6c7c914-8db3-469d-8ca1-694a8f32e121'

resource amlWorkspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' existing = {
  name: amlWorkspaceName
}

resource amlDataScientist 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(amlWorkspace.id, identityPrincipalId, amlDataScientistRoleId)
  scope: amlWorkspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', amlDataScientistRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}
