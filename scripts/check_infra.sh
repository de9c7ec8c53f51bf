#!/usr/bin/env bash
# Offline security scan of the Bicep templates under infra/ with checkov (framework bicep).
#
#   bash scripts/check_infra.sh
#
# checkov lives in its own virtualenv (.venv-checkov): its pins (packaging<24, pycep-parser==0.5.1)
# conflict with the project's pytest 9. The script creates that venv on first use and reuses it.
#
# Fails (exit 1) unless checkov reports failed == 0 AND parsing_errors == 0 AND every .bicep file
# under infra/ was parsed by checkov's own parser with at least one resource or module in it:
# checkov exits 0 when it cannot parse a file (it just skips it), and a file whose resources have
# no applicable check never shows up in the report, so both are verified here. A check that
# crashes on a resource (logged as "Failed to run check") must be suppressed inline for that
# resource, with a reason; otherwise it fails too. Prints one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${CHECKOV_VENV:-.venv-checkov}
CHECKOV_SPEC='checkov>=3.2,<4'
PYTHON=${PYTHON:-python3}

if ! "$VENV/bin/checkov" --version >/dev/null 2>&1; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$CHECKOV_SPEC"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

config=()
[ -f infra/.checkov.yaml ] && config=(--config-file infra/.checkov.yaml)

# Exit status is not trusted (0 on parse errors); the JSON summary decides below.
"$VENV/bin/checkov" -d infra --framework bicep --skip-download ${config[@]+"${config[@]}"} -o json \
  >"$tmp/report.json" 2>"$tmp/stderr.log" || true

"$VENV/bin/python" - "$tmp/report.json" "$tmp/stderr.log" <<'PY'
import json
import re
import sys
from pathlib import Path

from checkov.bicep.parser import Parser
from checkov.bicep.utils import get_scannable_file_paths

report_path, stderr_path = sys.argv[1], sys.argv[2]
problems = []

try:
    data = json.loads(Path(report_path).read_text() or "null")
except json.JSONDecodeError as error:
    data = None
    problems.append(f"checkov did not write a JSON report ({error})")
if isinstance(data, list):  # one report per framework
    data = next((r for r in data if r.get("check_type") == "bicep"), data[0] if data else None)
if not isinstance(data, dict) or "summary" not in data:
    # checkov writes a bare summary (no results key) when it found nothing to scan
    sys.stderr.write(Path(stderr_path).read_text()[-4000:])
    print("check_infra: FAILED: no bicep report from checkov (nothing scanned?)")
    sys.exit(1)

summary = data["summary"]
results = data.get("results", {})
passed, failed = summary.get("passed", 0), summary.get("failed", 0)
skipped, parsing_errors = summary.get("skipped", 0), summary.get("parsing_errors", 0)
resource_count = summary.get("resource_count", 0)

if failed:
    for check in results.get("failed_checks", []):
        problems.append(f"FAILED {check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}")
if parsing_errors:
    problems.append(f"{parsing_errors} parsing error(s): {results.get('parsing_errors') or data.get('parsing_errors')}")
if resource_count <= 0:
    problems.append("checkov counted no resource at all")

# Every .bicep file is scanned by checkov and parses with checkov's own (pinned) pycep into at
# least one resource or module.
on_disk = sorted(p.as_posix() for p in Path("infra").rglob("*.bicep"))
scannable = sorted(p.as_posix() for p in get_scannable_file_paths(root_folder="infra"))
if on_disk != scannable:
    problems.append(f"checkov would not scan: {sorted(set(on_disk) - set(scannable))}")
definitions, _, file_errors = Parser().get_files_definitions([Path(p) for p in on_disk])
for path in on_disk:
    tree = definitions.get(Path(path))
    if tree is None:
        problems.append(f"{path}: checkov's parser could not parse it ({file_errors})")
    elif not (tree.get("resources") or tree.get("modules")):
        problems.append(f"{path}: parsed, but no resource or module in it")

# A crashed check is neither passed nor failed: accept it only where it is suppressed inline.
skipped_pairs = {(c["check_id"], c["resource"]) for c in results.get("skipped_checks", [])}
crashed = set(re.findall(r"Failed to run check (\S+) on \S+?:(\S+)", Path(stderr_path).read_text()))
for check_id, resource in sorted(crashed - skipped_pairs):
    problems.append(f"check {check_id} crashed on {resource} and is not suppressed there")

for problem in problems:
    print(f"  {problem}")
status = "FAILED" if problems else "OK"
print(
    f"check_infra: {status}: checkov {summary.get('checkov_version', '?')} bicep: {passed} passed, "
    f"{failed} failed, {skipped} skipped, {parsing_errors} parsing errors, {resource_count} resources "
    f"checked, {len(on_disk)} .bicep files"
)
sys.exit(1 if problems else 0)
PY
