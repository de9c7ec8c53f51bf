// The gateway: a Flex Consumption (FC1) plan and its Python function app, running as the
// user-assigned identity created in main.bicep. Everything the app needs to authenticate is an
// identity, never a key: host storage, the deployment container, Application Insights, Key Vault.
// main.bicep makes this module depend on every role assignment of that identity, so the roles
// exist before the app first starts.

@description('Azure region of the plan and the app.')
param location string

@description('Tags put on every resource.')
param tags object = {}

@description('Name of the Flex Consumption plan.')
param planName string

@description('Name of the function app (also its default host name: <name>.azurewebsites.net).')
param functionAppName string

@description('Resource ID of the app\'s user-assigned managed identity.')
param identityId string

@description('Client ID of the app\'s user-assigned managed identity (AZURE_CLIENT_ID and the identity-based connections).')
param identityClientId string

@description('Name of the host storage account (identity-based AzureWebJobsStorage).')
param storageAccountName string

@description('Blob container of the host storage account that holds the deployment package.')
param deploymentContainerName string

@description('Name of the Application Insights component (Entra ID authenticated ingestion).')
param applicationInsightsName string

@description('Resource ID of the Log Analytics workspace that receives FunctionAppLogs.')
param logAnalyticsWorkspaceId string

@description('URI of the Key Vault that holds the endpoint keys (app setting KEY_VAULT_URL).')
param keyVaultUri string

@description('The gateway configuration document (app setting GATEWAY_CONFIG): endpoint names, URLs, formatters and Key Vault secret names, never secret values.')
param gatewayConfig object

@description('Python version of the Flex Consumption runtime.')
@allowed([
  '3.12'
  '3.13'
])
param pythonVersion string = '3.12'

@description('Most instances the app scales out to: the spending ceiling under load or abuse.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of each instance, in MB (CPU and bandwidth scale with it).')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Concurrent HTTP requests per instance; 0 keeps the platform default for the instance size.')
@minValue(0)
@maxValue(1000)
param httpPerInstanceConcurrency int = 0

@description('Always-ready (pre-started, billed) instances for the HTTP functions; 0 scales to zero.')
@minValue(0)
@maxValue(20)
param alwaysReadyInstances int = 0

@description('Zone-redundant plan (only in regions where Flex Consumption supports availability zones).')
param zoneRedundant bool = false

@description('Browser origins allowed by the platform\'s CORS (e.g. https://chat.example.com). Never \'*\'.')
param allowedCorsOrigins array = []

@description('True: App Service Authentication (Easy Auth) with Microsoft Entra ID in front of the app.')
param enableEasyAuth bool = false

@description('Client (application) ID of the Entra ID app registration that represents the gateway API (Easy Auth).')
param easyAuthClientId string = ''

@description('Token audiences Easy Auth accepts. Empty: api://<easyAuthClientId>.')
param easyAuthAllowedAudiences array = []

@description('Client IDs of the front-end applications allowed to call the gateway (Easy Auth). Empty: any application of the tenant that gets a token for the audience.')
param easyAuthAllowedApplications array = []

@description('Resource ID of the subnet the app integrates with (network.bicep). Empty: no VNet integration.')
param appSubnetId string = ''

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Zone redundancy for Flex Consumption exists only in some regions; it is opt-in through the zoneRedundant parameter so the default deploys everywhere Flex does.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
    zoneRedundant: zoneRedundant
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_17:Client certificates do not fit browser front-ends; callers authenticate with a function key or, with Easy Auth, an Entra ID token.
  // checkov:skip=CKV_AZURE_78:siteConfig.ftpsState is deprecated on Flex Consumption (no FTP) and rejected by ARM in some regions; FTP publishing is off through basicPublishingCredentialsPolicies.
  // checkov:skip=CKV_AZURE_212:Flex Consumption scales instances itself (0 to maximumInstanceCount); there is no worker count to set.
  // checkov:skip=CKV_AZURE_213:The platform health check is not supported on Flex Consumption; /api/health is anonymous for external probes.
  // checkov:skip=CKV_AZURE_222:A public HTTP gateway by design (browser front-ends); callers need a function key or an Entra ID token, and TLS 1.2 only.
  name: functionAppName
  location: location
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientAffinityEnabled: false
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    keyVaultReferenceIdentity: identityId
    virtualNetworkSubnetId: empty(appSubnetId) ? null : appSubnetId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
      remoteDebuggingEnabled: false
      cors: {
        allowedOrigins: allowedCorsOrigins
        supportCredentials: false
      }
      // The complete set (the contract test compares it with what the code reads): identity-based
      // host storage (blob only: HTTP triggers need no queue or table), Entra-authenticated
      // telemetry, and the gateway's own three settings.
      appSettings: [
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: identityClientId
        }
        {
          name: 'AzureWebJobsStorage__blobServiceUri'
          value: storage.properties.primaryEndpoints.blob
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: applicationInsights.properties.ConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'ClientId=${identityClientId};Authorization=AAD'
        }
        {
          name: 'PYTHON_ENABLE_INIT_INDEXING'
          value: '1'
        }
        {
          name: 'AZURE_CLIENT_ID'
          value: identityClientId
        }
        {
          name: 'KEY_VAULT_URL'
          value: keyVaultUri
        }
        {
          name: 'GATEWAY_CONFIG'
          value: string(gatewayConfig)
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        alwaysReady: (alwaysReadyInstances > 0) ? [
          {
            name: 'http'
            instanceCount: alwaysReadyInstances
          }
        ] : []
        triggers: (httpPerInstanceConcurrency > 0) ? {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        } : null
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

// No FTP and no basic-auth (user/password) publishing: deployments authenticate with Entra ID.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

// Optional Easy Auth: bearer tokens from Entra ID only (no login redirect, no token store, no
// client secret). /api/health stays anonymous for probes.
resource authSettings 'Microsoft.Web/sites/config@2024-04-01' = if (enableEasyAuth) {
  // checkov:skip=CKV_AZURE_13:False positive: checks the legacy authsettings (v1) 'enabled' flag; this is authsettingsV2 with platform.enabled true.
  // checkov:skip=CKV_AZURE_63:False positive: HTTP logging belongs to the 'web' config, not to authsettingsV2.
  // checkov:skip=CKV_AZURE_65:False positive: detailed error messages belong to the 'web' config, not to authsettingsV2.
  // checkov:skip=CKV_AZURE_66:False positive: failed request tracing belongs to the 'web' config, not to authsettingsV2.
  // checkov:skip=CKV_AZURE_80:False positive: .NET framework version does not apply to authsettingsV2 (and the app is Python).
  // checkov:skip=CKV_AZURE_88:False positive: Azure Files does not apply to authsettingsV2.
  // checkov:skip=CKV_AZURE_222:False positive: public network access is a property of the site, not of authsettingsV2.
  // checkov:skip=CKV_AZURE_70:checkov 3.3 crashes on this check for conditional resources (properties nested under the condition); httpSettings.requireHttps is asserted by tests/infra.
  parent: site
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'Return401'
      excludedPaths: [
        '/api/health'
      ]
    }
    httpSettings: {
      requireHttps: true
      routes: {
        apiPrefix: '/.auth'
      }
      forwardProxy: {
        convention: 'NoProxy'
      }
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: easyAuthClientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
        }
        validation: {
          allowedAudiences: empty(easyAuthAllowedAudiences) ? [
            'api://${easyAuthClientId}'
          ] : easyAuthAllowedAudiences
          defaultAuthorizationPolicy: empty(easyAuthAllowedApplications) ? null : {
            allowedApplications: easyAuthAllowedApplications
          }
        }
      }
    }
    login: {
      tokenStore: {
        enabled: false
      }
    }
  }
}

// Function host and worker logs to the workspace (alongside Application Insights).
resource siteDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'function-logs-to-log-analytics'
  scope: site
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'FunctionAppLogs'
        enabled: true
      }
    ]
  }
}

output functionAppName string = site.name
output defaultHostName string = site.properties.defaultHostName
