"""Checks torhaus's install artifacts: the Helm chart (helm lint, rendering with several value sets,
strict validation of every object against the Kubernetes API schemas, and the security and RBAC
properties the install promises), the plain manifests in deploy/ (byte-equal to the chart's
rendering), the k3s example (through `torhaus check`, the real translation), the Dockerfile
(hadolint) and the shell scripts (shellcheck).

Run by scripts/deploy-test.sh, which provides the tools; `--update` rewrites deploy/torhaus.yaml.
Helm is Helm's own Go SDK (v4) through the helm-python-sdk bindings: the same engine as the
`helm` binary, which no registry reachable here ships.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "torhaus"
PLAIN = ROOT / "deploy" / "torhaus.yaml"
EXAMPLE = ROOT / "deploy" / "examples" / "k3s"
CRDS_SCRIPT = ROOT / "deploy" / "gateway-api-crds.sh"
RELEASE = "torhaus"
NAMESPACE = "torhaus"
CONTROLLER_NAME = "torhaus.dev/gateway-controller"
# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest schema set
# kubernetes-validate ships: objects must be valid on both.
KUBE_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
# Which Gateway API release the gateway-api crate generates its types from. When Cargo.lock moves
# the crate, this table and deploy/gateway-api-crds.sh must move with it.
GATEWAY_API_FOR_CRATE = {"0.22": "v1.5.1"}
# The order helm installs kinds in (a subset of its InstallOrder), used for deploy/torhaus.yaml.
INSTALL_ORDER = [
    "namespace.yaml",
    "crd-authpolicy.yaml",
    "crd-issuer.yaml",
    "crd-dnspublisher.yaml",
    "serviceaccount.yaml",
    "clusterrole.yaml",
    "role.yaml",
    "gatewayclass.yaml",
    "daemonset.yaml",
    "poddisruptionbudget.yaml",
]


class CheckFailed(Exception):
    """A check's finding, worded for the person who has to fix it."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# ---------------------------------------------------------------------------------------------
# Rendering


def render_files(values: dict[str, Any] | None = None) -> dict[str, str]:
    """The chart's rendered templates by file name (NOTES.txt left out), as `helm template` would."""
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return {
        Path(path).name: text for path, text in rendered.items() if path.endswith((".yaml", ".yml")) and text.strip()
    }


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    objects = []
    for text in render_files(values).values():
        objects.extend(documents(text))
    return objects


def render_error(values: dict[str, Any]) -> str:
    """The error message of a rendering that must fail."""
    try:
        render(values)
    except helm.HelmError as err:
        return str(err)
    raise CheckFailed(f"rendering with {values} succeeded but must be refused")


def plain_manifest() -> str:
    files = render_files({"createNamespace": True})
    unknown = sorted(set(files) - set(INSTALL_ORDER))
    require(not unknown, f"templates {unknown} are missing from INSTALL_ORDER in {__file__}")
    parts = [
        (
            "# torhaus: the plain manifests, rendered from charts/torhaus with its default values\n"
            "# (release torhaus, namespace torhaus, createNamespace=true). Do not edit: change the chart\n"
            "# and run `scripts/deploy-test.sh --update`; the tests fail while the two differ.\n"
            "# Install the Gateway API CRDs first (deploy/gateway-api-crds.sh), then:\n"
            "#   kubectl apply --server-side -f deploy/torhaus.yaml\n"
        )
    ]
    for name in INSTALL_ORDER:
        if name in files:
            body = files[name].strip("\n")
            parts.append(f"---\n# Source: torhaus/templates/{name}\n{body}\n")
    return "".join(parts)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    require(len(found) == 1, f"expected exactly one {kind}, found {len(found)}")
    return found[0]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    require(len(pod["containers"]) == 1, "the DaemonSet must run exactly one container")
    return pod["containers"][0]


# ---------------------------------------------------------------------------------------------
# Validation shared by several checks

GATEWAY_API_GROUP = "gateway.networking.k8s.io/"


def validate_objects(objects: list[dict[str, Any]], origin: str) -> None:
    """Every object is well-formed; built-in kinds are valid against the API schemas, strictly
    (an unknown or misspelt field is an error, as `kubectl apply --validate=strict` makes it)."""
    require(objects, f"{origin}: no objects")
    for obj in objects:
        kind, api = obj.get("kind"), obj.get("apiVersion")
        name = (obj.get("metadata") or {}).get("name")
        where = f"{origin}: {kind} {name!r}"
        require(isinstance(kind, str) and isinstance(api, str), f"{where}: kind and apiVersion are required")
        require(isinstance(name, str) and name != "", f"{where}: metadata.name is required")
        require(
            re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name) is not None and len(name) <= 253,
            f"{where}: metadata.name is not a valid DNS subdomain",
        )
        if api.startswith(GATEWAY_API_GROUP):
            # No schema for CRDs ships here; the example check runs them through torhaus itself.
            require(api == GATEWAY_API_GROUP + "v1", f"{where}: use apiVersion {GATEWAY_API_GROUP}v1")
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                path = ".".join(str(p) for p in err.path)
                raise CheckFailed(
                    f"{where}: invalid for Kubernetes {version} at {path or '(root)'}: {err.message}"
                ) from None
            except kubernetes_validate.SchemaNotFoundError as err:
                raise CheckFailed(f"{where}: {err.message}") from None


def check_daemonset_shape(objects: list[dict[str, Any]], values: dict[str, Any]) -> None:
    """The DaemonSet properties the install promises, for the given value overrides."""
    ds = one(objects, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = container(objects)
    args = c["args"]
    grace = values.get("gracePeriodSeconds", 20)
    admin_bind = values.get("adminBind", "0.0.0.0:9901")
    admin_port = int(admin_bind.rsplit(":", 1)[1])

    require(args[:2] == ["run", "--kubernetes"], f"container args must start with run --kubernetes, got {args}")
    require(f"--grace-period={grace}s" in args, f"--grace-period={grace}s missing from {args}")
    require(f"--admin-bind={admin_bind}" in args, f"--admin-bind={admin_bind} missing from {args}")
    addresses = values.get("gatewayAddresses", [])
    published = [a for a in args if a.startswith("--gateway-address")]
    require(
        published == ([f"--gateway-address={','.join(addresses)}"] if addresses else []),
        f"gatewayAddresses {addresses} must become one --gateway-address flag, got {published}",
    )
    require(
        pod["terminationGracePeriodSeconds"] >= grace + 5,
        "terminationGracePeriodSeconds must exceed the drain grace period by at least 5 s",
    )
    host_network = values.get("hostNetwork", True)
    require(pod.get("hostNetwork") is host_network, "hostNetwork does not follow the value")
    expected_dns = "ClusterFirstWithHostNet" if host_network else "ClusterFirst"
    require(pod.get("dnsPolicy") == expected_dns, f"dnsPolicy must be {expected_dns}")

    psc = pod["securityContext"]
    require(psc.get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot must be true")
    require(isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0, "runAsUser must be a fixed non-root UID")
    csc = c["securityContext"]
    require(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem must be true")
    require(csc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities must drop ALL")
    require(
        csc.get("capabilities", {}).get("add") == ["NET_BIND_SERVICE"], "capabilities must add only NET_BIND_SERVICE"
    )
    require(csc.get("privileged") in (None, False), "the container must not be privileged")

    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    state_dir = values.get("stateDir", "/var/lib/torhaus")
    require(state_dir in mounts, f"the state dir {state_dir} must be a mounted volume")
    require(f"--state-dir={state_dir}" in args, f"--state-dir={state_dir} missing from {args}")
    volumes = {v["name"] for v in pod.get("volumes", [])}
    require(set(mounts.values()) <= volumes, "every volumeMount needs a volume")

    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    require(ports.get("admin") == admin_port, f"container port admin must be {admin_port}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        get = c.get(probe, {}).get("httpGet", {})
        require(get.get("path") == path and get.get("port") == "admin", f"{probe} must GET {path} on the admin port")

    resources = c.get("resources", {})
    require({"cpu", "memory"} <= set(resources.get("requests", {})), "cpu and memory requests are required")
    require("memory" in resources.get("limits", {}), "a memory limit is required")

    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c["env"]}
    for name, field in (
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_IP", "status.podIP"),
    ):
        require(env.get(name) == field, f"env {name} must come from the field {field}")

    selector = ds["spec"]["selector"]["matchLabels"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    require(selector.items() <= labels.items(), "the DaemonSet selector must match its pod labels")
    rolling = ds["spec"]["updateStrategy"].get("rollingUpdate", {})
    require(
        rolling.get("maxSurge", 0) == 0, "maxSurge must be 0: two pods on one node cannot both bind the host's ports"
    )


# The complete permission set. Any change must be deliberate: update this table and
# deploy/README.md's explanation together.
EXPECTED_CLUSTER_RULES = {
    ("gateway.networking.k8s.io", "gatewayclasses"): {"get", "list", "watch"},
    ("gateway.networking.k8s.io", "gateways"): {"get", "list", "watch"},
    ("gateway.networking.k8s.io", "httproutes"): {"get", "list", "watch"},
    ("gateway.networking.k8s.io", "referencegrants"): {"get", "list", "watch"},
    ("gateway.networking.k8s.io", "gatewayclasses/status"): {"patch", "update"},
    ("gateway.networking.k8s.io", "gateways/status"): {"patch", "update"},
    ("gateway.networking.k8s.io", "httproutes/status"): {"patch", "update"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get"},
    ("torhaus.dev", "authpolicies"): {"get", "list", "watch"},
    ("torhaus.dev", "authpolicies/status"): {"patch", "update"},
    ("torhaus.dev", "issuers"): {"get", "list", "watch"},
    ("torhaus.dev", "clusterissuers"): {"get", "list", "watch"},
    ("torhaus.dev", "issuers/status"): {"patch", "update"},
    ("torhaus.dev", "clusterissuers/status"): {"patch", "update"},
    ("torhaus.dev", "dnspublishers"): {"get", "list", "watch"},
    ("torhaus.dev", "dnspublishers/status"): {"patch", "update"},
    ("", "namespaces"): {"get", "list", "watch"},
    ("", "services"): {"get", "list", "watch"},
    ("discovery.k8s.io", "endpointslices"): {"get", "list", "watch"},
    ("", "secrets"): {"get", "list", "watch", "create", "update"},
}
EXPECTED_NAMESPACED_RULES = {
    ("coordination.k8s.io", "leases"): {"get", "create", "update", "patch"},
}


def flatten_rules(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            require("*" not in rule.get(field, []), f"{role['kind']} {role['metadata']['name']}: no wildcard {field}")
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


def diff_grants(actual: dict[tuple[str, str], set[str]], expected: dict[tuple[str, str], set[str]]) -> str:
    lines = []
    for key in sorted(set(actual) | set(expected)):
        a, e = actual.get(key, set()), expected.get(key, set())
        if a != e:
            lines.append(f"{key[0] or 'core'}/{key[1]}: granted {sorted(a)}, expected {sorted(e)}")
    return "; ".join(lines)


# ---------------------------------------------------------------------------------------------
# The checks


def check_lint() -> None:
    result = helm.lint(str(CHART), strict=True, namespace=NAMESPACE)
    findings = [f"[{m.get('severity')}] {m.get('path')}: {m.get('error')}" for m in result.get("messages", [])]
    require(
        not result.get("errors") and not findings,
        "helm lint --strict: " + "; ".join(findings + list(result.get("errors", []))),
    )


def check_default_render_is_valid() -> None:
    objects = render()
    kinds = sorted(o["kind"] for o in objects)
    require(
        kinds
        == sorted(
            [
                "CustomResourceDefinition",  # AuthPolicy
                "CustomResourceDefinition",  # Issuer
                "CustomResourceDefinition",  # ClusterIssuer
                "CustomResourceDefinition",  # DNSPublisher
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "GatewayClass",
                "DaemonSet",
                "PodDisruptionBudget",
            ]
        ),
        f"unexpected set of objects: {kinds}",
    )
    validate_objects(objects, "chart (default values)")
    for obj in objects:
        if obj["kind"] not in (
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "GatewayClass",
            "Namespace",
        ):
            require(obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']} must be in the release namespace")
    check_daemonset_shape(objects, {})


def check_rbac_is_least_privilege() -> None:
    objects = render()
    cluster = flatten_rules(one(objects, "ClusterRole"))
    require(cluster == EXPECTED_CLUSTER_RULES, "ClusterRole: " + diff_grants(cluster, EXPECTED_CLUSTER_RULES))
    role = one(objects, "Role")
    namespaced = flatten_rules(role)
    require(namespaced == EXPECTED_NAMESPACED_RULES, "Role: " + diff_grants(namespaced, EXPECTED_NAMESPACED_RULES))
    sa = one(objects, "ServiceAccount")["metadata"]["name"]
    require(
        one(objects, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"] == sa,
        "the DaemonSet must run as the chart's ServiceAccount",
    )
    for binding_kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = one(objects, binding_kind)
        require(
            binding["roleRef"]
            == {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": role_kind,
                "name": one(objects, role_kind)["metadata"]["name"],
            },
            f"{binding_kind} must refer to the chart's {role_kind}",
        )
        require(
            binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}],
            f"{binding_kind} must bind only the chart's ServiceAccount",
        )
    no_secret_writes = flatten_rules(one(render({"rbac": {"writeSecrets": False}}), "ClusterRole"))
    require(
        no_secret_writes.get(("", "secrets")) == {"get", "list", "watch"},
        "rbac.writeSecrets=false must remove the Secret write rule",
    )


def check_gatewayclass_and_pdb() -> None:
    objects = render()
    gc = one(objects, "GatewayClass")
    require(gc["spec"]["controllerName"] == CONTROLLER_NAME, f"GatewayClass controllerName must be {CONTROLLER_NAME}")
    require(gc["metadata"]["name"] == "torhaus", "the default GatewayClass is named torhaus")
    pdb = one(objects, "PodDisruptionBudget")
    ds = one(objects, "DaemonSet")
    require(
        pdb["spec"]["selector"]["matchLabels"] == ds["spec"]["selector"]["matchLabels"],
        "the PDB must select the DaemonSet's pods",
    )
    require(pdb["spec"].get("maxUnavailable") == 1, "the PDB allows one pod down at a time")
    renamed = one(render({"gatewayClass": {"name": "edge"}}), "GatewayClass")
    require(renamed["metadata"]["name"] == "edge", "gatewayClass.name must name the GatewayClass")
    without = render({"gatewayClass": {"create": False}, "podDisruptionBudget": {"enabled": False}})
    require(
        not by_kind(without, "GatewayClass") and not by_kind(without, "PodDisruptionBudget"),
        "gatewayClass.create=false and podDisruptionBudget.enabled=false must leave them out",
    )


def check_value_variants() -> None:
    variants: list[dict[str, Any]] = [
        {"adminBind": "[::]:9902", "gracePeriodSeconds": 60, "terminationGracePeriodSeconds": 65},
        {"hostNetwork": False, "createNamespace": True, "prometheusAnnotations": False},
        {
            "stateDir": "/state",
            "stateVolume": {"hostPath": {"path": "/var/lib/torhaus", "type": "DirectoryOrCreate"}},
            "extraArgs": ["--trusted-hops", "1"],
            "gatewayAddresses": ["192.0.2.10", "2001:db8::10"],
            "extraEnv": [{"name": "TZ", "value": "UTC"}],
            "tolerations": [{"operator": "Exists"}],
            "nodeSelector": {"torhaus.dev/edge": "true"},
            "priorityClassName": "system-cluster-critical",
            "imagePullSecrets": [{"name": "regcred"}],
            "podAnnotations": {"a": "b"},
            "podLabels": {"c": "d"},
        },
    ]
    for values in variants:
        objects = render(values)
        validate_objects(objects, f"chart with {values}")
        check_daemonset_shape(objects, values)
    ns = one(render({"createNamespace": True}), "Namespace")
    require(ns["metadata"]["name"] == NAMESPACE, "the Namespace must be the release namespace")
    require(
        ns["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "privileged",
        "the Namespace must admit host-network pods (Pod Security privileged)",
    )
    byo = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "mine"}})
    require(
        not [
            o
            for o in byo
            if o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
        ],
        "rbac.create=false and serviceAccount.create=false must render no RBAC objects",
    )
    require(
        one(byo, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"] == "mine",
        "serviceAccount.name must be used",
    )
    annotated = one(render(), "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    require(annotated.get("prometheus.io/port") == "9901", "the Prometheus port annotation follows adminBind")


def check_bad_values_are_refused() -> None:
    message = render_error({"gracePeriodSeconds": 30, "terminationGracePeriodSeconds": 30})
    require(
        "terminationGracePeriodSeconds" in message, f"the refusal must name terminationGracePeriodSeconds: {message}"
    )
    message = render_error({"adminBind": "localhost"})
    require("adminBind" in message, f"the refusal must name adminBind: {message}")
    # values.schema.json: a misspelt or mistyped value fails instead of being silently ignored.
    message = render_error({"gracePeriod": 10})
    require("gracePeriod" in message, f"the refusal must name the unknown value gracePeriod: {message}")
    message = render_error({"logFormat": "yaml"})
    require("logFormat" in message, f"the refusal must name logFormat: {message}")
    message = render_error({"rbac": {"create": "yes"}})
    require("rbac" in message and "create" in message, f"the refusal must name rbac.create: {message}")


def check_plain_manifests_match_chart(update: bool) -> None:
    expected = plain_manifest()
    if update:
        PLAIN.write_text(expected)
    require(PLAIN.exists(), f"{PLAIN.relative_to(ROOT)} is missing: run scripts/deploy-test.sh --update")
    require(
        PLAIN.read_text() == expected,
        f"{PLAIN.relative_to(ROOT)} differs from the chart's rendering: run scripts/deploy-test.sh --update",
    )
    objects = documents(PLAIN.read_text())
    validate_objects(objects, PLAIN.name)
    require(objects[0]["kind"] == "Namespace", "deploy/torhaus.yaml must create its namespace first")
    check_daemonset_shape(objects, {})


def check_values_are_documented() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()

    def leaves(node: Any, prefix: str) -> list[str]:
        # Maps whose keys are the user's own (volume sources, selectors) are documented as one value.
        if isinstance(node, dict) and node and prefix not in ("stateVolume", "resources", "updateStrategy"):
            return [leaf for key, child in node.items() for leaf in leaves(child, f"{prefix}.{key}" if prefix else key)]
        return [prefix]

    missing = [key for key in leaves(values, "") if f"`{key}`" not in readme]
    require(not missing, f"charts/torhaus/README.md documents no row for {missing}")
    # Each value's key line must follow a comment block containing a `# --` description.
    documented: set[str] = set()
    path: list[tuple[int, str]] = []
    comments: list[str] = []
    for line in (CHART / "values.yaml").read_text().splitlines():
        if line.lstrip().startswith("#"):
            comments.append(line)
            continue
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if match:
            indent = len(match.group(1))
            path = [(i, k) for i, k in path if i < indent] + [(indent, match.group(2))]
            if any("# --" in c for c in comments):
                documented.add(".".join(k for _, k in path))
        comments = []
    undocumented = [key for key in leaves(values, "") if key not in documented]
    require(not undocumented, f"values.yaml: no `# --` comment above {undocumented}")


def check_versions_agree() -> None:
    lock = (ROOT / "Cargo.lock").read_text()
    match = re.search(r'name = "gateway-api"\nversion = "(\d+\.\d+)\.\d+"', lock)
    require(match is not None, "Cargo.lock has no gateway-api package")
    crate = match.group(1)
    require(crate in GATEWAY_API_FOR_CRATE, f"gateway-api {crate}: add the Gateway API release it models to {__file__}")
    pinned = re.search(r"^GATEWAY_API_VERSION=(v[\d.]+)$", CRDS_SCRIPT.read_text(), re.MULTILINE)
    require(
        pinned is not None and pinned.group(1) == GATEWAY_API_FOR_CRATE[crate],
        f"deploy/gateway-api-crds.sh must pin {GATEWAY_API_FOR_CRATE[crate]}, the release gateway-api {crate} models",
    )
    version = pinned.group(1)
    for doc in (ROOT / "README.md", ROOT / "deploy" / "README.md", ROOT / "scripts" / "cluster-test.sh"):
        found = set(re.findall(r"gateway-api/releases/download/(v[\d.]+)/", doc.read_text()))
        require(
            found <= {version}, f"{doc.relative_to(ROOT)} names Gateway API {sorted(found)}, but the pin is {version}"
        )
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    package = re.search(
        r'^\[package\]\nname = "torhaus"\nversion = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.MULTILINE
    )
    require(
        package is not None and chart["appVersion"] == package.group(1),
        f"Chart.yaml appVersion {chart['appVersion']} must be the torhaus version in Cargo.toml",
    )


def torhaus_binary() -> Path | None:
    explicit = os.environ.get("TORHAUS_BIN")
    if explicit:
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "torhaus" / "target"))
    for profile in ("debug", "release"):
        candidate = target / profile / "torhaus"
        if candidate.is_file():
            return candidate
    return None


class Skipped(Exception):
    """A check that cannot run on this machine; it is counted and reported, never passed."""


def check_example_translates() -> None:
    example = documents((EXAMPLE / "whoami.yaml").read_text()) + documents((EXAMPLE / "gateway.yaml").read_text())
    validate_objects(example, "deploy/examples/k3s")
    binary = torhaus_binary()
    if binary is None:
        raise Skipped("no torhaus binary (build it, or set TORHAUS_BIN)")
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        # What the walkthrough's openssl step makes, here with a throwaway key.
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                str(tmpdir / "key.pem"),
                "-out",
                str(tmpdir / "cert.pem"),
                "-days",
                "1",
                "-subj",
                "/CN=whoami.home.arpa",
                "-addext",
                "subjectAltName=DNS:whoami.home.arpa",
            ],
            check=True,
            capture_output=True,
        )
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": "whoami-tls", "namespace": "default"},
            "data": {
                name: base64.b64encode((tmpdir / f).read_bytes()).decode()
                for name, f in (("tls.crt", "cert.pem"), ("tls.key", "key.pem"))
            },
        }
        (tmpdir / "key.pem").unlink()
        (tmpdir / "cert.pem").unlink()
        config = tmpdir / "config"
        config.mkdir()
        # Standalone mode knows no Deployment: hand it the Service and the objects the cluster holds.
        services = [o for o in example if o["kind"] == "Service"]
        gateway_class = one(render(), "GatewayClass")
        (config / "cluster.yaml").write_text(yaml.safe_dump_all(services + [secret, gateway_class]))
        shutil.copy(EXAMPLE / "gateway.yaml", config / "gateway.yaml")
        result = subprocess.run(
            [str(binary), "check", "--config", str(config)], capture_output=True, text=True, timeout=60, check=False
        )
    out = result.stdout + result.stderr
    require(result.returncode == 0, f"torhaus check rejected the example (exit {result.returncode}):\n{out}")
    for needle in ("Gateway default/home", "HTTPRoute default/whoami ", "HTTPRoute default/whoami-https-redirect"):
        require(needle in out, f"torhaus check does not report {needle!r}:\n{out}")
    require("=False" not in out.replace("Conflicted=False", ""), f"a condition is False:\n{out}")
    require(out.count("(attachedRoutes 1)") == 2, f"each listener must have one route attached:\n{out}")


def check_binary_knows_the_chart_flags() -> None:
    """Every flag the DaemonSet passes exists in `torhaus run` (once Kubernetes mode exists)."""
    binary = torhaus_binary()
    if binary is None:
        raise Skipped("no torhaus binary (build it, or set TORHAUS_BIN)")
    result = subprocess.run([str(binary), "run", "--help"], capture_output=True, text=True, timeout=30, check=False)
    require(result.returncode == 0, f"torhaus run --help failed:\n{result.stderr}")
    known = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", result.stdout))
    if "--kubernetes" not in known:
        raise Skipped(f"{binary} has no `run --kubernetes` yet")
    args = container(render())["args"]
    flags = {arg.split("=", 1)[0] for arg in args if arg.startswith("--")}
    unknown = sorted(flags - known)
    require(not unknown, f"the DaemonSet passes {unknown}, which `torhaus run` does not know")


def tool(name: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    require(found is not None, f"{name} is not installed (scripts/deploy-test.sh installs it)")
    return found  # type: ignore[return-value]


def check_dockerfile() -> None:
    result = subprocess.run([tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False)
    require(result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}")
    text = (ROOT / "Dockerfile").read_text()
    require("cargo build --release -p torhaus --locked" in text, "the Dockerfile must build as the project does")
    require(re.search(r"^USER 65532", text, re.MULTILINE) is not None, "the image must run as UID 65532")
    stages = re.findall(r"^FROM ", text, re.MULTILINE)
    require(len(stages) >= 2, "the Dockerfile must be multi-stage")
    # --locked builds only with an up-to-date Cargo.lock: check it without building.
    result = subprocess.run(
        ["cargo", "metadata", "--locked", "--format-version", "1", "--no-deps"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    require(result.returncode == 0, f"cargo metadata --locked (the Dockerfile's --locked would fail):\n{result.stderr}")


def check_shell_scripts() -> None:
    scripts = [ROOT / "scripts" / "cluster-test.sh", ROOT / "scripts" / "deploy-test.sh", CRDS_SCRIPT]
    result = subprocess.run(
        [tool("shellcheck"), "--severity=style", *map(str, scripts)], capture_output=True, text=True, check=False
    )
    require(result.returncode == 0, f"shellcheck:\n{result.stdout}{result.stderr}")


CHECKS: list[tuple[str, Callable[..., None]]] = [
    ("helm lint --strict", check_lint),
    ("default rendering is valid", check_default_render_is_valid),
    ("RBAC is exactly the documented least privilege", check_rbac_is_least_privilege),
    ("GatewayClass and PodDisruptionBudget", check_gatewayclass_and_pdb),
    ("value variants render valid objects", check_value_variants),
    ("bad values are refused with the value's name", check_bad_values_are_refused),
    ("deploy/torhaus.yaml equals the chart's rendering", check_plain_manifests_match_chart),
    ("every value is documented", check_values_are_documented),
    ("Gateway API and torhaus versions agree", check_versions_agree),
    ("the k3s example translates cleanly", check_example_translates),
    ("torhaus run knows every flag the chart passes", check_binary_knows_the_chart_flags),
    ("Dockerfile", check_dockerfile),
    ("shell scripts", check_shell_scripts),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="rewrite deploy/torhaus.yaml from the chart")
    args = parser.parse_args()
    passed = failed = skipped = 0
    for name, check in CHECKS:
        try:
            if check is check_plain_manifests_match_chart:
                check(args.update)
            else:
                check()
        except Skipped as why:
            skipped += 1
            print(f"skip  {name}: {why}")
        except CheckFailed as why:
            failed += 1
            print(f"FAIL  {name}: {why}")
        except Exception:  # noqa: BLE001 (a crash in a check is a failure, reported with its traceback)
            failed += 1
            print(f"FAIL  {name}:\n{traceback.format_exc()}")
        else:
            passed += 1
            print(f"ok    {name}")
    print(f"deploy: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
