"""What checkov does not check in the templates: identity-only access, least-privilege roles,
the Flex Consumption shape, hardening, and that no secret is a parameter, a setting or an output.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from .bicep import (
    INFRA,
    MODULES,
    THIS_RESOURCE_GROUP,
    app_settings,
    bicep_files,
    bicepparam_files,
    bicepparam_values,
    body,
    condition,
    decorators,
    evaluate,
    function_call,
    only,
    parse,
    property_path,
    resources,
    text_without_comments,
)

MAIN = INFRA / "main.bicep"
SUB = INFRA / "main.sub.bicep"
FUNCTION = MODULES / "function.bicep"
STORAGE = MODULES / "storage.bicep"
KEYVAULT = MODULES / "keyvault.bicep"
MONITORING = MODULES / "monitoring.bicep"

# Built-in role definition IDs (learn.microsoft.com, "Azure built-in roles").
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
KEY_VAULT_SECRETS_OFFICER = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
AZUREML_DATA_SCIENTIST = "f6c7c914-8db3-469d-8ca1-694a8f32e121"
COGNITIVE_SERVICES_OPENAI_USER = "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd"
COGNITIVE_SERVICES_USER = "a97b65f3-24c7-4388-baec-2e87135dc908"

# (file, role assignment symbol) -> (role, the resource it is scoped to, that resource's type, principal)
EXPECTED_ROLE_ASSIGNMENTS = {
    ("rbac.bicep", "storageBlobDataOwner"): (
        STORAGE_BLOB_DATA_OWNER,
        "storage",
        "Microsoft.Storage/storageAccounts",
        "identityPrincipalId",
    ),
    ("rbac.bicep", "monitoringMetricsPublisher"): (
        MONITORING_METRICS_PUBLISHER,
        "applicationInsights",
        "Microsoft.Insights/components",
        "identityPrincipalId",
    ),
    ("rbac-keyvault.bicep", "keyVaultSecretsUser"): (
        KEY_VAULT_SECRETS_USER,
        "keyVault",
        "Microsoft.KeyVault/vaults",
        "identityPrincipalId",
    ),
    ("rbac-keyvault.bicep", "keyVaultSecretsOfficer"): (
        KEY_VAULT_SECRETS_OFFICER,
        "keyVault",
        "Microsoft.KeyVault/vaults",
        "operatorPrincipalId",
    ),
    ("rbac-aml.bicep", "amlDataScientist"): (
        AZUREML_DATA_SCIENTIST,
        "amlWorkspace",
        "Microsoft.MachineLearningServices/workspaces",
        "identityPrincipalId",
    ),
    ("rbac-foundry.bicep", "openAiUser"): (
        COGNITIVE_SERVICES_OPENAI_USER,
        "account",
        "Microsoft.CognitiveServices/accounts",
        "identityPrincipalId",
    ),
    ("rbac-foundry.bicep", "cognitiveServicesUser"): (
        COGNITIVE_SERVICES_USER,
        "account",
        "Microsoft.CognitiveServices/accounts",
        "identityPrincipalId",
    ),
}

# Flex Consumption: deprecated (some rejected by ARM with error 51021) site properties.
FLEX_DEPRECATED_SITE_CONFIG = {
    "alwaysOn",
    "ftpsState",
    "functionAppScaleLimit",
    "functionsRuntimeScaleMonitoringEnabled",
    "javaContainer",
    "javaContainerVersion",
    "javaVersion",
    "linuxFxVersion",
    "netFrameworkVersion",
    "nodeVersion",
    "phpVersion",
    "powerShellVersion",
    "preWarmedInstanceCount",
    "pythonVersion",
    "use32BitWorkerProcess",
    "windowsFxVersion",
}
FLEX_DEPRECATED_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "FUNCTIONS_MAX_HTTP_CONCURRENCY",
    "FUNCTIONS_WORKER_PROCESS_COUNT",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_NODE_DEFAULT_VERSION",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "ENABLE_ORYX_BUILD",
    "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT",
    "DEPLOYMENT_STORAGE_CONNECTION_STRING",
    "WEBSITE_TIME_ZONE",
    "TZ",
}


def _all_trees() -> dict[str, dict[str, Any]]:
    return {path.name: parse(path) for path in bicep_files()}


def _param(path: Path, name: str) -> dict[str, Any]:
    return parse(path)["parameters"][name]


# --- storage: identities only ----------------------------------------------------------------


def test_host_storage_takes_entra_id_only() -> None:
    account = only(parse(STORAGE), "Microsoft.Storage/storageAccounts")
    props = account["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["defaultToOAuthAuthentication"] is True
    assert props["allowBlobPublicAccess"] is False
    assert props["allowCrossTenantReplication"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True
    assert props["networkAcls"]["bypass"] == "AzureServices"
    container = only(parse(STORAGE), "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert container["properties"]["publicAccess"] == "None"


@pytest.mark.parametrize(
    "path",
    [*bicep_files(), *bicepparam_files(), *INFRA.rglob("*.json"), *INFRA.rglob("*.yaml")],
    ids=lambda p: p.relative_to(INFRA).as_posix(),
)
def test_no_key_based_access_anywhere(path: Path) -> None:
    text = path.read_text() if path.suffix not in {".bicep", ".bicepparam"} else text_without_comments(path)
    for forbidden in (
        "listKeys(",
        "listkeys(",
        "listSecrets(",
        "listConnectionStrings(",
        "AccountKey=",
        "SharedAccessSignature",
        "DefaultEndpointsProtocol",
        "InstrumentationKey=",
        "APPINSIGHTS_INSTRUMENTATIONKEY",
        "getSecret(",
    ):
        assert forbidden not in text, f"{forbidden!r} in {path.name}"


def test_host_storage_app_settings_are_identity_based() -> None:
    settings = app_settings(parse(FUNCTION))
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    uri = settings["AzureWebJobsStorage__blobServiceUri"]
    assert property_path(uri) == "storage.properties.primaryEndpoints.blob"
    # Least privilege: an app with only HTTP triggers uses no queue or table.
    assert not {"AzureWebJobsStorage__queueServiceUri", "AzureWebJobsStorage__tableServiceUri"} & set(
        settings
    )
    assert "AzureWebJobsStorage" not in settings, "a connection string"
    assert not any(name.startswith("AzureWebJobsStorage__accountKey") for name in settings)


def test_deployment_container_is_read_with_the_user_assigned_identity() -> None:
    deployment = only(parse(FUNCTION), "Microsoft.Web/sites")["properties"]["functionAppConfig"]["deployment"]
    storage = deployment["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["value"] == "${storage.properties.primaryEndpoints.blob}${deploymentContainerName}"
    assert storage["authentication"] == {
        "type": "UserAssignedIdentity",
        "userAssignedIdentityResourceId": "identityId",
    }


# --- monitoring -------------------------------------------------------------------------------


def test_application_insights_takes_entra_id_only() -> None:
    component = only(parse(MONITORING), "Microsoft.Insights/components")
    assert component["properties"]["DisableLocalAuth"] is True
    assert property_path(component["properties"]["WorkspaceResourceId"]) == "logAnalytics.id"
    settings = app_settings(parse(FUNCTION))
    assert (
        settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
        == "ClientId=${identityClientId};Authorization=AAD"
    )
    assert property_path(settings["APPLICATIONINSIGHTS_CONNECTION_STRING"]) == (
        "applicationInsights.properties.ConnectionString"
    )


def test_diagnostic_settings_send_vault_audit_and_function_logs_to_the_workspace() -> None:
    (vault_diag,) = resources(parse(KEYVAULT), "Microsoft.Insights/diagnosticSettings").values()
    assert body(vault_diag)["scope"] == "keyVault"
    assert body(vault_diag)["properties"]["workspaceId"] == "logAnalyticsWorkspaceId"
    assert {"categoryGroup": "audit", "enabled": True} in body(vault_diag)["properties"]["logs"]
    (site_diag,) = resources(parse(FUNCTION), "Microsoft.Insights/diagnosticSettings").values()
    assert body(site_diag)["scope"] == "site"
    assert body(site_diag)["properties"]["workspaceId"] == "logAnalyticsWorkspaceId"
    assert {"category": "FunctionAppLogs", "enabled": True} in body(site_diag)["properties"]["logs"]
    main_modules = parse(MAIN)["modules"]
    for module in ("keyVault", "functionApp"):
        assert property_path(body(main_modules[module])["params"]["logAnalyticsWorkspaceId"]) == (
            "monitoring.outputs.logAnalyticsWorkspaceId"
        )


# --- Key Vault --------------------------------------------------------------------------------


def test_key_vault_is_rbac_only_and_recoverable() -> None:
    props = only(parse(KEYVAULT), "Microsoft.KeyVault/vaults")["properties"]
    assert props["enableRbacAuthorization"] is True
    assert "accessPolicies" not in props
    assert props["enableSoftDelete"] is True
    assert props["softDeleteRetentionInDays"] == 90
    assert props["enablePurgeProtection"] is True
    assert props["enabledForDeployment"] is False
    assert props["enabledForTemplateDeployment"] is False
    assert props["enabledForDiskEncryption"] is False
    assert props["sku"] == {"family": "A", "name": "standard"}
    assert props["networkAcls"]["bypass"] == "AzureServices"


def test_no_secret_is_declared_in_a_template() -> None:
    for name, tree in _all_trees().items():
        assert not resources(tree, "Microsoft.KeyVault/vaults/secrets"), name


def test_an_existing_vault_gets_only_the_role_assignment() -> None:
    main = parse(MAIN)
    assert _param(MAIN, "existingKeyVaultName")["default"] == ""
    assert condition(main["modules"]["keyVault"]) == "createKeyVault"
    access = body(main["modules"]["keyVaultAccess"])
    assert condition(main["modules"]["keyVaultAccess"]) is None, "the app identity's role, in both cases"
    scope = function_call(access["scope"], "resource_group")
    assert scope and scope["resource_group_name"] == "keyVaultResourceGroupName"
    operator = access["params"]["operatorPrincipalId"]["operator"]["operands"]
    assert operator == {"condition": "createKeyVault", "true_value": "principalId", "false_value": ""}


# --- role assignments -------------------------------------------------------------------------


def _role_guid(tree: dict[str, Any], node: Any) -> str:
    """The GUID a roleDefinitionId expression resolves to (subscriptionResourceId of a literal or var)."""
    call = function_call(node, "subscription_resource_id")
    assert call and call["resource_type"] == "Microsoft.Authorization/roleDefinitions", node
    ref = call["resource_name_1"]
    path = property_path(ref)
    if path and "." in path:  # roles.someRole
        var, key = path.split(".", 1)
        return tree["variables"][var]["value"][key]
    if path in tree.get("variables", {}):
        return tree["variables"][path]["value"]
    return ref


def test_role_assignments_are_exactly_the_expected_least_privilege_ones() -> None:
    found = {}
    for file, tree in _all_trees().items():
        for name, assignment in resources(tree, "Microsoft.Authorization/roleAssignments").items():
            config = body(assignment)
            scope = config["scope"]
            scope_decl = tree["resources"].get(scope)
            assert scope_decl is not None, f"{file}:{name} is not scoped to a single declared resource"
            props = config["properties"]
            found[(file, name)] = (
                _role_guid(tree, props["roleDefinitionId"]),
                scope,
                scope_decl["type"],
                props["principalId"],
            )
            # Deterministic, idempotent name: guid(<scope>.id, <principal>, <role>).
            guid = function_call(config["name"], "guid")
            assert guid and property_path(guid["base_string"]) == f"{scope}.id", f"{file}:{name}"
            assert guid["extra_string_1"] == props["principalId"], f"{file}:{name}"
    assert found == EXPECTED_ROLE_ASSIGNMENTS


def test_the_app_identity_is_always_a_service_principal() -> None:
    for file, tree in _all_trees().items():
        for name, assignment in resources(tree, "Microsoft.Authorization/roleAssignments").items():
            props = body(assignment)["properties"]
            if props["principalId"] == "identityPrincipalId":
                assert props["principalType"] == "ServicePrincipal", f"{file}:{name}"
            else:
                assert props["principalType"] == "operatorPrincipalType", f"{file}:{name}"
                assert condition(assignment) is not None, f"{file}:{name}: operator role must be optional"


def test_roles_exist_before_the_app_starts() -> None:
    main = parse(MAIN)
    assert "identity" in resources(main, "Microsoft.ManagedIdentity/userAssignedIdentities")
    function_app = body(main["modules"]["functionApp"])
    assert set(function_app["dependsOn"]) == {"rbac", "keyVaultAccess", "amlAccess", "foundryAccess"}
    for module in ("rbac", "keyVaultAccess", "amlAccess", "foundryAccess"):
        params = body(main["modules"][module])["params"]
        assert property_path(params["identityPrincipalId"]) == "identity.properties.principalId", module
    assert property_path(function_app["params"]["identityId"]) == "identity.id"
    assert property_path(function_app["params"]["identityClientId"]) == "identity.properties.clientId"


def test_keyless_scoring_role_is_optional_and_scoped_to_the_workspace_group() -> None:
    main = parse(MAIN)
    aml = main["modules"]["amlAccess"]
    assert _param(MAIN, "amlWorkspaceName")["default"] == ""
    cond = condition(aml)
    assert cond["operator"]["type"] == "not"
    assert function_call(cond["operator"]["operands"]["bool_value"], "empty") == {
        "item_to_test": "amlWorkspaceName"
    }
    scope = function_call(body(aml)["scope"], "resource_group")
    assert scope and scope["resource_group_name"] == "amlResourceGroupName"


# --- the function app -------------------------------------------------------------------------


def test_plan_is_flex_consumption() -> None:
    plan = only(parse(FUNCTION), "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True


def test_site_runs_python_on_flex_with_its_own_identity() -> None:
    site = only(parse(FUNCTION), "Microsoft.Web/sites")
    assert site["kind"] == "functionapp,linux"
    assert site["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {"'${identityId}'": {}}}
    config = site["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "pythonVersion"}
    assert config["scaleAndConcurrency"]["maximumInstanceCount"] == "maximumInstanceCount"
    assert config["scaleAndConcurrency"]["instanceMemoryMB"] == "instanceMemoryMB"
    for path in (MAIN, SUB, FUNCTION):
        python = _param(path, "pythonVersion")
        assert decorators(python)["allowed"] == ["3.12", "3.13"] and python["default"] == "3.12", path.name
        ceiling = _param(path, "maximumInstanceCount")
        assert ceiling["default"] == 40 and decorators(ceiling)["max_value"] == 1000, path.name
        assert decorators(_param(path, "instanceMemoryMB"))["allowed"] == [512, 2048, 4096], path.name


def test_site_is_hardened() -> None:
    site = only(parse(FUNCTION), "Microsoft.Web/sites")
    props = site["properties"]
    assert props["httpsOnly"] is True
    assert props["clientAffinityEnabled"] is False
    assert props["keyVaultReferenceIdentity"] == "identityId"
    site_config = props["siteConfig"]
    assert site_config["minTlsVersion"] == "1.2"
    assert site_config["scmMinTlsVersion"] == "1.2"
    assert site_config["http20Enabled"] is True
    assert site_config["remoteDebuggingEnabled"] is False
    assert FLEX_DEPRECATED_SITE_CONFIG & (set(site_config) | set(props)) == set()
    policies = {
        body(policy)["name"]: body(policy)
        for policy in resources(
            parse(FUNCTION), "Microsoft.Web/sites/basicPublishingCredentialsPolicies"
        ).values()
    }
    assert set(policies) == {"ftp", "scm"}
    for policy in policies.values():
        assert policy["parent"] == "site" and policy["properties"] == {"allow": False}


def test_app_settings_carry_no_secret_and_no_deprecated_flex_setting() -> None:
    settings = app_settings(parse(FUNCTION))
    assert FLEX_DEPRECATED_SETTINGS & set(settings) == set()
    assert not [name for name in settings if name.startswith("WEBSITE_CONTENT")]
    assert settings["PYTHON_ENABLE_INIT_INDEXING"] == "1"
    assert settings["AZURE_CLIENT_ID"] == "identityClientId"
    assert settings["KEY_VAULT_URL"] == "keyVaultUri"
    assert function_call(settings["GATEWAY_CONFIG"], "string") == {"value_to_convert": "gatewayConfig"}
    for tree in _all_trees().values():  # no second place that writes app settings
        for config in resources(tree, "Microsoft.Web/sites/config").values():
            assert body(config)["name"] != "appsettings"


def test_easy_auth_is_optional_bearer_only_and_leaves_health_anonymous() -> None:
    tree = parse(FUNCTION)
    (auth,) = resources(tree, "Microsoft.Web/sites/config").values()
    assert condition(auth) == "enableEasyAuth"
    for path in (MAIN, SUB, FUNCTION):
        assert _param(path, "enableEasyAuth")["default"] is False, path.name
    config = body(auth)
    assert config["parent"] == "site" and config["name"] == "authsettingsV2"
    props = config["properties"]
    assert props["platform"]["enabled"] is True
    assert props["globalValidation"] == {
        "requireAuthentication": True,
        "unauthenticatedClientAction": "Return401",
        "excludedPaths": ["/api/health"],
    }
    assert props["httpSettings"]["requireHttps"] is True
    assert props["login"]["tokenStore"]["enabled"] is False
    aad = props["identityProviders"]["azureActiveDirectory"]
    assert aad["enabled"] is True
    assert aad["registration"]["clientId"] == "easyAuthClientId"
    assert "clientSecretSettingName" not in aad["registration"], "bearer-only needs no client secret"
    assert aad["registration"]["openIdIssuer"].endswith("${tenant().tenantId}/v2.0")


def test_cors_is_an_explicit_origin_list_never_a_wildcard() -> None:
    cors = only(parse(FUNCTION), "Microsoft.Web/sites")["properties"]["siteConfig"]["cors"]
    assert cors == {"allowedOrigins": "allowedCorsOrigins", "supportCredentials": False}
    for path in (MAIN, SUB, FUNCTION):
        assert _param(path, "allowedCorsOrigins")["default"] == [], path.name
    for path in bicepparam_files():
        origins = bicepparam_values(path).get("allowedCorsOrigins", [])
        assert all(origin != "*" and "*" not in origin for origin in origins), path.name
        assert all(re.fullmatch(r"https?://[^/\s*]+", origin) for origin in origins), path.name


# --- secrets in parameters and outputs --------------------------------------------------------

SECRET_NAME = re.compile(r"secret|password|passwd|token|credential|connectionstring|apikey|accountkey", re.I)


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: p.relative_to(INFRA).as_posix())
def test_no_secret_parameter_default_or_output(path: Path) -> None:
    tree = parse(path)
    for name, param in tree.get("parameters", {}).items():
        if "secure" in decorators(param):
            assert param.get("default") is None, f"@secure() parameter {name} has a default"
        assert not SECRET_NAME.search(name), (
            f"parameter {name} looks like a secret; secrets are set in the vault"
        )
    for name, output in tree.get("outputs", {}).items():
        assert "secure" not in decorators(output)
        assert not SECRET_NAME.search(name.replace("_", "")), f"output {name}"
        assert not re.search(r"(^|_)(KEY|KEYS)$|INSTRUMENTATION|CONNECTION", name.upper()), f"output {name}"
        rendered = str(output.get("value"))
        for forbidden in (
            "listKeys",
            "list_keys",
            "ConnectionString",
            "InstrumentationKey",
            "getSecret",
            "secrets",
        ):
            assert forbidden not in rendered, f"output {name} exposes {forbidden}"


def test_gateway_config_holds_secret_names_never_values() -> None:
    for path in bicepparam_files():
        config = bicepparam_values(path)["gatewayConfig"]
        for endpoint in config["endpoints"]:
            auth = endpoint["auth"]
            assert auth["type"] in {"key_vault", "entra"}, (
                f"{path.name}: {endpoint['name']} (env auth is local-only)"
            )
            assert set(auth) <= {"type", "secret_name", "scope"}, f"{path.name}: {endpoint['name']}"


def test_outputs_are_upper_snake_and_name_the_app_identity_and_vault() -> None:
    outputs = parse(MAIN)["outputs"]
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", name) for name in outputs)
    assert {
        "AZURE_FUNCTION_NAME",
        "AZURE_FUNCTION_URL",
        "AZURE_CLIENT_ID",
        "AZURE_PRINCIPAL_ID",
        "KEY_VAULT_URL",
        "AZURE_TENANT_ID",
    } <= set(outputs)
    assert outputs["AZURE_FUNCTION_URL"]["value"] == "https://${functionApp.outputs.defaultHostName}/api"
    assert property_path(outputs["AZURE_CLIENT_ID"]["value"]) == "identity.properties.clientId"
    assert property_path(outputs["AZURE_PRINCIPAL_ID"]["value"]) == "identity.properties.principalId"


# --- parameter combinations (evaluated from the templates' own expressions) -------------------


@pytest.mark.parametrize(
    ("zone_redundant", "storage_sku", "always_ready", "deployed"),
    [
        (False, "Standard_LRS", 0, ("Standard_LRS", 0)),
        (False, "Standard_ZRS", 1, ("Standard_ZRS", 1)),
        (True, "Standard_LRS", 0, ("Standard_ZRS", 2)),
        (True, "Standard_LRS", 1, ("Standard_ZRS", 2)),
        (True, "Standard_ZRS", 5, ("Standard_ZRS", 5)),
    ],
)
def test_zone_redundancy_deploys_zrs_storage_and_the_two_instances_it_bills(
    zone_redundant, storage_sku, always_ready, deployed
) -> None:
    main = parse(MAIN)
    values = {
        "zoneRedundant": zone_redundant,
        "storageSkuName": storage_sku,
        "alwaysReadyInstances": always_ready,
    }
    storage_sku_param = body(main["modules"]["storage"])["params"]["skuName"]
    always_ready_param = body(main["modules"]["functionApp"])["params"]["alwaysReadyInstances"]
    assert (evaluate(storage_sku_param, values, main), evaluate(always_ready_param, values, main)) == deployed
    plan = body(main["modules"]["functionApp"])["params"]["zoneRedundant"]
    assert evaluate(plan, values, main) is zone_redundant


def test_zone_redundancy_states_its_cost() -> None:
    for path in (MAIN, SUB):
        description = decorators(_param(path, "zoneRedundant"))["description"]
        assert "Standard_ZRS" in description and "2 always-ready" in description, path.name
        assert "billed even when idle" in description, path.name


@pytest.mark.parametrize(
    ("existing_name", "existing_group", "granted_in"),
    [
        ("", "", THIS_RESOURCE_GROUP),
        ("", "rg-elsewhere", THIS_RESOURCE_GROUP),  # a new vault is created here, so granted here
        ("kv-shared", "", THIS_RESOURCE_GROUP),
        ("kv-shared", "rg-elsewhere", "rg-elsewhere"),
    ],
)
def test_the_vault_role_is_granted_where_the_vault_is(existing_name, existing_group, granted_in) -> None:
    main = parse(MAIN)
    values = {"existingKeyVaultName": existing_name, "existingKeyVaultResourceGroup": existing_group}
    creates = evaluate(condition(main["modules"]["keyVault"]), values, main)
    assert creates is (existing_name == "")
    access = body(main["modules"]["keyVaultAccess"])
    scope = function_call(access["scope"], "resource_group")
    assert evaluate(scope["resource_group_name"], values, main) == granted_in
    existing = body(resources(main, "Microsoft.KeyVault/vaults", existing=True)["existingKeyVault"])
    assert (
        evaluate(function_call(existing["scope"], "resource_group")["resource_group_name"], values, main)
        == granted_in
    )


@pytest.mark.parametrize(
    ("vnet", "ip_rules", "public_access", "default_action", "allowed"),
    [
        (False, [], "Enabled", "Allow", []),
        (True, [], "Disabled", "Deny", []),
        (True, ["203.0.113.7/32"], "Enabled", "Deny", ["203.0.113.7/32"]),
        (False, ["203.0.113.7/32"], "Enabled", "Allow", []),  # without a VNet the vault stays public
    ],
)
def test_the_vault_firewall_opens_only_for_the_listed_addresses(
    vnet, ip_rules, public_access, default_action, allowed
) -> None:
    """`publicNetworkAccess: 'Disabled'` overrides every firewall rule: the operator's addresses
    need the public endpoint Enabled with the firewall denying everyone else."""
    keyvault = parse(KEYVAULT)
    props = only(keyvault, "Microsoft.KeyVault/vaults")["properties"]
    values = {"vnetEnabled": vnet, "allowedIpRules": ip_rules}
    assert evaluate(props["publicNetworkAccess"], values, keyvault) == public_access
    acls = props["networkAcls"]
    assert evaluate(acls["defaultAction"], values, keyvault) == default_action
    loop = acls["ipRules"]
    assert loop["config"] == {"value": loop["loop_type"]["detail"]["item_name"]}
    assert evaluate(loop["loop_type"]["detail"]["array_name"], values, keyvault) == allowed


def test_the_vault_firewall_addresses_are_parameters_of_both_entry_points() -> None:
    main, sub = parse(MAIN), parse(SUB)
    assert _param(MAIN, "keyVaultAllowedIpRules")["default"] == []
    assert body(main["modules"]["keyVault"])["params"]["allowedIpRules"] == "keyVaultAllowedIpRules"
    assert body(sub["modules"]["gateway"])["params"]["keyVaultAllowedIpRules"] == "keyVaultAllowedIpRules"


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: p.relative_to(INFRA).as_posix())
def test_conditional_module_outputs_are_read_with_a_non_null_assertion(path: Path) -> None:
    """`bicep build` warns (BCP318) on `<conditional module>.outputs`: the module may be null.
    Every such read here sits behind the module's own condition, said with `!`."""
    tree, text = parse(path), text_without_comments(path)
    for name, module in tree.get("modules", {}).items():
        if condition(module) is not None:
            assert not re.search(rf"\b{name}\.outputs\b", text), f"{path.name}: {name}.outputs without `!`"


def _code_without_strings(path: Path) -> str:
    """The file's code: comments dropped, each string literal replaced by what it interpolates
    (`\'` escapes included, which `text_without_comments` does not need to know about)."""
    token = re.compile(r"//[^\n]*|/\*.*?\*/|'''.*?'''|'(?:[^'\\\n]|\\.)*'", flags=re.S)

    def keep(match: re.Match[str]) -> str:
        found = match.group(0)
        return " " if found.startswith("/") else " ".join(re.findall(r"\$\{([^}]*)\}", found))

    return token.sub(keep, path.read_text())


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_parameter_and_variable_is_used(path: Path) -> None:
    """`bicep build` runs the linter, which warns on unused parameters and variables."""
    tree, code = parse(path), _code_without_strings(path)
    for name in [*tree.get("parameters", {}), *tree.get("variables", {})]:
        assert len(re.findall(rf"(?<![.\w]){name}\b", code)) >= 2, f"{path.name}: {name} is never used"


# --- Azure Managed Redis for callers' limits ----------------------------------------------------

REDIS = MODULES / "redis.bicep"


def test_redis_is_optional_entra_only_tls_and_the_app_identity_has_its_access_policy() -> None:
    main = parse(MAIN)
    assert _param(MAIN, "enableRedis")["default"] is False
    module = main["modules"]["redis"]
    assert condition(module) == "enableRedis"
    assert property_path(body(module)["params"]["identityPrincipalId"]) == "identity.properties.principalId"
    tree = parse(REDIS)
    cluster = only(tree, "Microsoft.Cache/redisEnterprise")
    assert cluster["properties"]["minimumTlsVersion"] == "1.2"
    database = only(tree, "Microsoft.Cache/redisEnterprise/databases")["properties"]
    assert database["accessKeysAuthentication"] == "Disabled"
    assert database["clientProtocol"] == "Encrypted"
    assert database["port"] == 10000
    # redis-py's non-cluster client, as shared.limits.RedisStore uses it, needs one endpoint.
    assert database["clusteringPolicy"] == "EnterpriseCluster"
    policy = only(tree, "Microsoft.Cache/redisEnterprise/databases/accessPolicyAssignments")["properties"]
    assert policy == {"accessPolicyName": "default", "user": {"objectId": "identityPrincipalId"}}


@pytest.mark.parametrize("vnet_enabled", [False, True])
def test_redis_gets_a_private_endpoint_and_no_public_access_with_the_network_option(vnet_enabled) -> None:
    tree = parse(REDIS)
    cluster = only(tree, "Microsoft.Cache/redisEnterprise")
    assert evaluate(cluster["properties"]["publicNetworkAccess"], {"vnetEnabled": vnet_enabled}, tree) == (
        "Disabled" if vnet_enabled else "Enabled"
    )
    endpoint = resources(tree, "Microsoft.Network/privateEndpoints")["privateEndpoint"]
    assert condition(endpoint) == "vnetEnabled"
    connection = body(endpoint)["properties"]["privateLinkServiceConnections"][0]["properties"]
    assert connection["groupIds"] == ["redisEnterprise"]
    zone = resources(tree, "Microsoft.Network/privateDnsZones")["dnsZone"]
    assert body(zone)["name"] == "privatelink.redis.azure.net"


def test_the_redis_url_output_is_what_the_gateway_configuration_takes() -> None:
    from shared.callers import StoreSettings

    output = parse(REDIS)["outputs"]["redisUrl"]["value"]
    assert output == "rediss://${redis.properties.hostName}:10000"
    url = output.replace("${redis.properties.hostName}", "gw.westeurope.redis.azure.net")
    StoreSettings(type="redis", url=url, auth={"type": "entra"})  # accepted by the gateway
    assert "REDIS_URL" in parse(MAIN)["outputs"] and "REDIS_URL" in parse(SUB)["outputs"]
