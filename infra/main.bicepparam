// Parameters of infra/main.bicep (resource-group scope):
//
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.bicepparam
//
// A value given on the command line wins: `-p infra/main.bicepparam -p environmentName=prod`.
// Every parameter is described by its @description in main.bicep; the optional ones are listed
// below, commented out, with their defaults. Nothing here is secret: endpoint keys go into the
// vault after deployment (`az keyvault secret set`), never into a parameter.
using 'main.bicep'

// Short environment name (1-20 letters, digits, hyphens): part of every resource name.
param environmentName = 'dev'

// The gateway configuration, deployed as the app setting GATEWAY_CONFIG (JSON). It names each
// endpoint's Key Vault secret; the secret values are set later with `az keyvault secret set`.
// Decimals are written json('0.8') (Bicep has no decimal literals). Fields: README, "Configuration".
// A keyless managed online endpoint (aad_token auth mode; set amlWorkspaceName below) would use
//   auth: { type: 'entra' }
param gatewayConfig = {
  default_model: 'llama-chat'
  endpoints: [
    {
      name: 'llama-chat'
      endpoint_url: 'https://my-llama-endpoint.westeurope.inference.ml.azure.com/score'
      endpoint_api_type: 'dedicated'
      content_formatter: 'CustomOpenAIChatContentFormatter'
      deployment_name: 'llama-2-7b-chat-1'
      auth: {
        type: 'key_vault'
        secret_name: 'llama-chat-key'
      }
      model_kwargs: {
        temperature: json('0.8')
        max_new_tokens: 512
      }
      timeout_s: 60
      max_retries: 2
      fallbacks: [
        'mistral-large'
      ]
    }
    {
      name: 'mistral-large'
      endpoint_url: 'https://my-mistral-large.westeurope.models.ai.azure.com/v1/chat/completions'
      endpoint_api_type: 'serverless'
      content_formatter: 'MistralChatContentFormatter'
      auth: {
        type: 'key_vault'
        secret_name: 'mistral-large-key'
      }
      model_kwargs: {
        temperature: json('0.7')
      }
    }
  ]
}

// Browser front-ends allowed by the platform's CORS (exact origins; never '*').
param allowedCorsOrigins = [
  'https://chat.example.com'
]

// --- Optional (defaults shown) -----------------------------------------------------------------
// param location = '<the resource group's region>'
// param pythonVersion = '3.12'              // or '3.13'
// param maximumInstanceCount = 40           // spending ceiling (40-1000)
// param instanceMemoryMB = 2048             // 512 | 2048 | 4096
// param httpPerInstanceConcurrency = 0      // 0: platform default
// param alwaysReadyInstances = 0            // > 0: no cold start, billed while idle
// param zoneRedundant = false
// param storageSkuName = 'Standard_LRS'     // or 'Standard_ZRS'
// param vnetEnabled = false                 // true: VNet integration + private endpoints
// param enableEasyAuth = false              // true: Entra ID bearer tokens required (except /api/health)
// param easyAuthClientId = ''               // the gateway API's app registration (client) ID
// param easyAuthAllowedAudiences = []       // default: ['api://<easyAuthClientId>']
// param easyAuthAllowedApplications = []    // the front-ends' client IDs
// param principalId = ''                    // operator object ID: Key Vault Secrets Officer
// param principalType = 'User'              // or 'Group' | 'ServicePrincipal'
// param existingKeyVaultName = ''           // use this vault instead of creating one
// param existingKeyVaultResourceGroup = ''  // default: this resource group
// param amlWorkspaceName = ''               // keyless scoring: AzureML Data Scientist for the app
// param amlWorkspaceResourceGroup = ''      // default: this resource group
// param foundryAccountName = ''             // keyless Foundry / Azure OpenAI: a role for the app
// param foundryAccountResourceGroup = ''    // default: this resource group
// param foundryRoleName = 'Cognitive Services OpenAI User'  // or 'Cognitive Services User'
// An Azure Managed Redis for callers' limits across instances; its URL (output REDIS_URL) goes
// in gatewayConfig's callers.limits.store: {type: 'redis', url: ..., auth: {type: 'entra'}}.
// param enableRedis = false
// param redisSkuName = 'Balanced_B0'
// param logRetentionInDays = 30
// param functionAppName = ''                // default: func-<environmentName>-<token>
// param keyVaultName = ''                   // default: kv-<token>
// param storageAccountName = ''             // default: st<token>
// param tags = {}
