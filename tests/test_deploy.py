"""The deployment files in deploy/: they parse, reference each other and run the documented command.

No container engine or cluster is needed: the manifests are read as data and checked against
each other, the README, the Dockerfile and the operator's own configuration parser. What can
run here does run: the Kubernetes init container's script (against a fake Secret volume),
`check-config` on both configurations, `nginx -t` on the proxy configuration and a real
redis-server on deploy/redis.conf.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from idtoken.keys.signing import generate
from idtoken.settings import Settings, parse_settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
OPERATOR_SERVICES = ("operator-1", "operator-2")
# The longest session_ttl the configuration accepts (settings.py): a browser socket may stay
# open that long.
MAX_SESSION_TTL = 3600


# ----------------------------------------------------------------------------- loading helpers
@cache
def k8s_docs() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, document) for every object in deploy/k8s, kustomization.yaml excluded."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return tuple(docs)


def k8s_objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_docs() if doc["kind"] == kind]


def k8s_object(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in k8s_objects(kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s, found {len(found)}"
    return found[0]


def deployment() -> dict[str, Any]:
    return k8s_object("Deployment")


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = deployment()["spec"]["template"]["spec"]
    return spec


def operator_container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def init_container() -> dict[str, Any]:
    inits = pod_spec().get("initContainers", [])
    assert len(inits) == 1, "the keys must be installed by one init container"
    container: dict[str, Any] = inits[0]
    return container


def volumes() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec()["volumes"]}


def mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def mount_for(container: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The mount holding ``path`` (the deepest one) and the path relative to it."""
    target = PurePosixPath(path)
    best: tuple[dict[str, Any], str] | None = None
    for mount_path, mount in mounts(container).items():
        base = PurePosixPath(mount_path)
        if target == base or base in target.parents:
            rel = str(target.relative_to(base))
            if best is None or len(mount_path) > len(best[0]["mountPath"]):
                best = (mount, rel)
    assert best is not None, f"{path} is on no volume of container {container['name']}"
    return best


def secret_data(secret: dict[str, Any]) -> dict[str, bytes]:
    data = {k: base64.b64decode(v, validate=True) for k, v in (secret.get("data") or {}).items()}
    data.update({k: v.encode() for k, v in (secret.get("stringData") or {}).items()})
    return data


def configmap_data(cm: dict[str, Any]) -> dict[str, str]:
    return dict(cm.get("data") or {})


@cache
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def compose_service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = compose()["services"][name]
    return service


def compose_mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """container path -> (source, mode) for short-syntax volumes."""
    result = {}
    for entry in service.get("volumes", []):
        parts = entry.split(":")
        source, target = parts[0], parts[1]
        result[target] = (source, parts[2] if len(parts) > 2 else "rw")
    return result


def settings_from(text: str, environ: dict[str, str] | None = None) -> Settings:
    return parse_settings(tomllib.loads(text), base_dir=Path("/"), environ=environ or {})


def seconds(value: str | int) -> int:
    """nginx / Kubernetes durations: 10, "10s", "5m", "1h"."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", str(value))
    assert match, f"not a duration: {value!r}"
    factor = {None: 1, "s": 1, "m": 60, "h": 3600, "ms": 0}[match.group(2)]
    return int(match.group(1)) * factor


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the operator's variables, with the venv's scripts on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDTOKEN_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def operator_exe() -> str:
    exe = Path(sys.executable).parent / "idtoken-operator"
    assert exe.exists(), f"{exe}: the console script is not installed in this environment"
    return str(exe)


# ----------------------------------------------------------------------------- the command
def readme_command() -> list[str]:
    """The serve command README.md documents for running an instance."""
    text = (REPO / "README.md").read_text()
    found = re.findall(r"^idtoken-operator (serve --config \S+ --host \S+ --port \d+)", text, re.M)
    assert found, "README.md no longer documents `idtoken-operator serve --config ...`"
    return ["idtoken-operator", *shlex.split(found[0])]


def same_shape(documented: list[str], used: list[str]) -> bool:
    """Equal except for the configuration path (the README's is only an example)."""
    if len(documented) != len(used):
        return False
    return all(
        a == b or (i > 0 and documented[i - 1] == "--config")
        for i, (a, b) in enumerate(zip(documented, used, strict=True))
    )


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


# ----------------------------------------------------------------------------- Dockerfile
@dataclass
class Instruction:
    keyword: str
    value: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.value for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> str:
        values = self.all(keyword)
        assert len(values) == 1, f"expected one {keyword} in stage {self.name}, got {values}"
        return values[0]


@cache
def dockerfile() -> tuple[list[Instruction], list[Stage]]:
    """Global instructions (before the first FROM) and the stages."""
    logical: list[str] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    preamble: list[Instruction] = []
    stages: list[Stage] = []
    for line in logical:
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        value = value.strip()
        if keyword == "FROM":
            parts = value.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, value))
        else:
            preamble.append(Instruction(keyword, value))
    return preamble, stages


def final_stage() -> Stage:
    return dockerfile()[1][-1]


def image_command() -> list[str]:
    stage = final_stage()
    entrypoint = json.loads(stage.one("ENTRYPOINT"))
    cmd = json.loads(stage.one("CMD"))
    assert isinstance(entrypoint, list) and isinstance(cmd, list), "use the exec (JSON) form"
    return [*entrypoint, *cmd]


def image_uid() -> int:
    user = final_stage().all("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: use a numeric UID so runAsNonRoot can check it"
    return int(uid)


def dockerignore_excludes(path: str) -> bool:
    """Docker's .dockerignore rules, as far as the patterns of /.dockerignore use them: the
    last matching pattern wins, `!` re-includes, a pattern matching a directory covers its
    contents."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = (
            re.escape(body)
            .replace(r"\*\*/", "(?:.*/)?")
            .replace(r"\*\*", ".*")
            .replace(r"\*", "[^/]*")
            .replace(r"\?", "[^/]")
        )
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


# ----------------------------------------------------------------------------- nginx.conf
@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def find(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def one(self, name: str) -> Directive:
        found = self.find(name)
        assert len(found) == 1, f"expected one {name} in {self.name} {self.args}, got {found}"
        return found[0]

    def value(self, name: str) -> str:
        return " ".join(self.one(name).args)

    def headers(self) -> dict[str, str]:
        return {d.args[0].lower(): " ".join(d.args[1:]) for d in self.find("proxy_set_header")}

    def walk(self) -> Iterator[Directive]:
        for d in self.block or []:
            yield d
            yield from d.walk()


def _nginx_tokens(text: str) -> Iterator[str]:
    for match in re.finditer(
        r'"((?:\\.|[^"\\])*)"|\'([^\']*)\'|#[^\n]*|([{};])|([^\s{};"\']+)', text
    ):
        dq, sq, punct, word = match.groups()
        if match.group(0).startswith("#"):
            continue
        if dq is not None:
            yield dq
        elif sq is not None:
            yield sq
        else:
            yield punct or word


@cache
def nginx_conf() -> Directive:
    tokens = list(_nginx_tokens((DEPLOY / "nginx.conf").read_text()))
    pos = 0

    def block() -> list[Directive]:
        nonlocal pos
        items: list[Directive] = []
        words: list[str] = []
        while pos < len(tokens):
            tok = tokens[pos]
            pos += 1
            if tok == ";":
                items.append(Directive(words[0], words[1:]))
                words = []
            elif tok == "{":
                items.append(Directive(words[0], words[1:], block()))
                words = []
            elif tok == "}":
                assert not words, f"unterminated directive {words}"
                return items
            else:
                words.append(tok)
        assert not words, f"unterminated directive {words}"
        return items

    return Directive("main", [], block())


def nginx_http() -> Directive:
    return nginx_conf().one("http")


def nginx_location(path: str) -> Directive:
    server = nginx_http().one("server")
    found = [d for d in server.find("location") if d.args[-1] == path]
    assert len(found) == 1, f"nginx.conf needs one `location {path}`"
    return found[0]


# =============================================================================== tests
def test_every_yaml_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert COMPOSE in files and len(files) >= 8
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"
        for doc in docs:
            assert isinstance(doc, dict), f"{path}: a document is not a mapping"
    for name, doc in k8s_docs():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), name
        assert doc["metadata"].get("name"), f"{name}: an object has no name"
        assert "namespace" not in doc["metadata"], f"{name}: leave the namespace to kubectl/-k"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk
    kinds = {doc["kind"] for _, doc in k8s_docs()}
    assert {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    } <= kinds
    # The image kustomize rewrites is the one the pod uses.
    image_names = {i["name"] for i in kustomization.get("images", [])}
    for container in [operator_container(), init_container()]:
        assert container["image"].split(":")[0] in image_names


def test_deployment_runs_the_documented_command() -> None:
    documented = readme_command()
    container = operator_container()
    used = [*container["command"], *container["args"]]
    assert same_shape(documented, used), f"README: {documented}\nDeployment: {used}"
    assert used == image_command(), "the Deployment and the image's ENTRYPOINT+CMD differ"
    assert flag(used, "--host") == "0.0.0.0"


@cache
def serve_help() -> str:
    return subprocess.run(
        [operator_exe(), "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
        timeout=60,
    ).stdout


def graceful_shutdown_seconds(args: list[str]) -> float:
    """How long the operator lets in-flight requests finish after SIGTERM: `--drain-timeout`
    if the command sets it, else that flag's default, else the value cli.py hands uvicorn."""
    if "--drain-timeout" in args:
        return float(flag(args, "--drain-timeout"))
    found = re.search(r"--drain-timeout\b.*?\(default\s+([\d.]+)\)", serve_help(), re.S)
    if found:
        return float(found.group(1))
    source = (REPO / "operator" / "idtoken" / "cli.py").read_text()
    fixed = re.search(r"timeout_graceful_shutdown=(\d+)", source)
    assert fixed, "cannot tell the operator's graceful-shutdown timeout"
    return float(fixed.group(1))


def test_the_serve_flags_exist() -> None:
    for name in ("--config", "--host", "--port", "--workers"):
        assert name in serve_help()


def test_configmaps_and_secrets_referenced_by_the_deployment_exist() -> None:
    configmaps = {o["metadata"]["name"]: configmap_data(o) for o in k8s_objects("ConfigMap")}
    secrets = {o["metadata"]["name"]: secret_data(o) for o in k8s_objects("Secret")}
    referenced = 0
    for volume in volumes().values():
        if "configMap" in volume:
            source, store = volume["configMap"], configmaps
            name = source["name"]
        elif "secret" in volume:
            source, store = volume["secret"], secrets
            name = source["secretName"]
        else:
            continue
        referenced += 1
        assert name in store, f"volume {volume['name']}: no {name} in deploy/k8s"
        for item in source.get("items", []):
            assert item["key"] in store[name], f"{name} has no key {item['key']}"
    for container in [operator_container(), init_container()]:
        for env in container.get("env", []):
            ref = env.get("valueFrom", {})
            if "secretKeyRef" in ref:
                name, key = ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
                assert key in secrets.get(name, {}), f"env {env['name']}: no secret {name}/{key}"
                referenced += 1
            if "configMapKeyRef" in ref:
                name, key = ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"]
                assert key in configmaps.get(name, {}), f"env {env['name']}: no {name}/{key}"
                referenced += 1
        for source in container.get("envFrom", []):
            name = (source.get("secretRef") or source.get("configMapRef"))["name"]
            assert name in secrets or name in configmaps
    assert referenced >= 4  # config, signing keys, VAPID key, Redis URL
    # Every volume a container mounts is declared, and every declared volume is used.
    used = {m["name"] for c in [operator_container(), init_container()] for m in mounts(c).values()}
    assert used == set(volumes())


def test_the_config_flag_points_at_the_mounted_configmap() -> None:
    config_path = flag(operator_container()["args"], "--config")
    for container in [operator_container(), init_container()]:
        mount, rel = mount_for(container, config_path)
        assert mount.get("readOnly") is True
        volume = volumes()[mount["name"]]
        assert "configMap" in volume, f"{config_path} is not on the ConfigMap volume"
        cm = k8s_object("ConfigMap", volume["configMap"]["name"])
        items = {i["path"]: i["key"] for i in volume["configMap"].get("items", [])}
        key = items.get(rel, rel) if items else rel
        assert key in configmap_data(cm), f"{config_path} is not a key of the ConfigMap"
    # The init container checks the same file the operator will load.
    script = init_container()["args"][0]
    assert f"check-config --config {config_path}" in script


def test_the_configmap_configuration_parses() -> None:
    volume = volumes()[mount_for(operator_container(), "/etc/idtoken/operator.toml")[0]["name"]]
    text = configmap_data(k8s_object("ConfigMap", volume["configMap"]["name"]))["operator.toml"]
    assert "redis_url" not in tomllib.loads(text), "the Redis password belongs in a Secret"
    settings = settings_from(text)
    assert settings.redis_url is None
    assert settings.issuer.startswith("https://")
    assert not settings.demo.enabled
    # With the environment the pod gets, it is a Redis deployment.
    env = {e["name"]: e for e in operator_container()["env"]}
    ref = env["IDTOKEN_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    url = secret_data(k8s_object("Secret", ref["name"]))[ref["key"]].decode()
    assert settings_from(text, {"IDTOKEN_REDIS_URL": url}).redis_url == url


def test_keys_come_from_secrets_into_a_writable_volume() -> None:
    """Secret volumes are read-only and keys_dir takes a lock file: the init container copies
    the keys into an emptyDir mounted where the configuration looks for them."""
    volume = volumes()["config"]
    text = configmap_data(k8s_object("ConfigMap", volume["configMap"]["name"]))["operator.toml"]
    settings = settings_from(text)
    main, init = operator_container(), init_container()
    for path in (str(settings.keys_dir), str(settings.push.vapid_private_key_file)):
        for container in (main, init):
            mount, _ = mount_for(container, path)
            assert not mount.get("readOnly"), f"{path} must be writable in {container['name']}"
            assert "emptyDir" in volumes()[mount["name"]], f"{path} must be on an emptyDir"
        assert mount_for(main, path)[0]["name"] == mount_for(init, path)[0]["name"]
    secret_mounts = [
        m for m in mounts(init).values() if "secret" in volumes()[m["name"]] and m.get("readOnly")
    ]
    names = {volumes()[m["name"]]["secret"]["secretName"] for m in secret_mounts}
    assert names == {"idtoken-signing-keys", "idtoken-vapid-key"}
    # The operator container never sees the Secret volumes themselves.
    assert not any("secret" in volumes()[m["name"]] for m in mounts(main).values())
    signing = secret_data(k8s_object("Secret", "idtoken-signing-keys"))
    assert any(k.endswith(".pem") for k in signing), "the signing-keys Secret needs a .pem entry"


def _fake_secret_volume(root: Path, files: dict[str, bytes]) -> None:
    """The layout the kubelet writes: files in a timestamped directory, ..data pointing at it,
    and a symlink per key."""
    stamp = root / "..2025_01_01_00_00_00.000000000"
    stamp.mkdir(parents=True)
    for name, content in files.items():
        (stamp / name).write_bytes(content)
        (root / name).symlink_to(f"..data/{name}")
    (root / "..data").symlink_to(stamp.name)


def _install_keys(tmp_path: Path, signing: dict[str, bytes]) -> subprocess.CompletedProcess[str]:
    text = configmap_data(k8s_object("ConfigMap", "idtoken-operator-config"))["operator.toml"]
    paths = {
        "/run/secrets/idtoken/signing": tmp_path / "secret-signing",
        "/run/secrets/idtoken/vapid": tmp_path / "secret-vapid",
        "/var/lib/idtoken": tmp_path / "state",
        "/etc/idtoken": tmp_path / "etc",
    }
    script = init_container()["args"][0]
    for container_path in paths:
        assert container_path in script or container_path in text, container_path
    for mount_path in mounts(init_container()):
        assert mount_path in paths or mount_path == "/tmp", f"unexpected mount {mount_path}"
    for container_path, local in paths.items():
        script = script.replace(container_path, str(local))
        text = text.replace(container_path, str(local))
    vapid = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _fake_secret_volume(paths["/run/secrets/idtoken/signing"], signing)
    _fake_secret_volume(paths["/run/secrets/idtoken/vapid"], {"vapid.pem": vapid})
    paths["/var/lib/idtoken"].mkdir()
    paths["/etc/idtoken"].mkdir()
    (paths["/etc/idtoken"] / "operator.toml").write_text(text)
    assert init_container()["command"][:2] == ["/bin/sh", "-ec"]
    return subprocess.run(
        ["/bin/sh", "-ec", script],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )


def test_install_keys_copies_the_secrets_and_checks_them(tmp_path: Path) -> None:
    made = tmp_path / "made"
    kid = generate(made).kid
    signing = {p.name: p.read_bytes() for p in made.iterdir() if not p.name.startswith(".")}
    assert set(signing) == {f"{kid}.pem", f"{kid}.json"}
    done = _install_keys(tmp_path, signing)
    assert done.returncode == 0, done.stderr
    assert "configuration OK" in done.stdout and "signing keys: 1" in done.stdout
    keys = tmp_path / "state" / "keys"
    assert (keys / f"{kid}.pem").read_bytes() == signing[f"{kid}.pem"]
    assert not (keys / f"{kid}.pem").is_symlink()
    assert (keys / f"{kid}.pem").stat().st_mode & 0o077 == 0
    assert (tmp_path / "state" / "vapid.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY")


def test_install_keys_refuses_a_secret_without_keys(tmp_path: Path) -> None:
    # Without it the operator would create a different signing key in every pod.
    done = _install_keys(tmp_path, {"README": b"no keys"})
    assert done.returncode != 0
    assert "no entry ending in .pem" in done.stderr
    assert not list((tmp_path / "state").rglob("*.pem"))


def test_install_keys_refuses_the_placeholder(tmp_path: Path) -> None:
    signing = secret_data(k8s_object("Secret", "idtoken-signing-keys"))
    done = _install_keys(tmp_path, signing)
    assert done.returncode != 0
    assert "not an unencrypted PEM private key" in done.stderr


def test_probes_hit_the_health_endpoints_on_the_container_port() -> None:
    container = operator_container()
    (port,) = container["ports"]
    assert port["containerPort"] == int(flag(container["args"], "--port"))
    expected = {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
        "startupProbe": "/healthz",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in (port["name"], port["containerPort"]), probe
        # /readyz waits up to 1 s for the store: the probe must wait longer.
        assert container[probe].get("timeoutSeconds", 1) >= 2, probe


def test_graceful_shutdown_fits_in_the_grace_period() -> None:
    graceful = graceful_shutdown_seconds(operator_container()["args"])
    assert graceful > 0
    spec = pod_spec()
    pre_stop = operator_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    sleep = int(pre_stop[1])
    assert sleep >= 1
    assert spec["terminationGracePeriodSeconds"] > sleep + graceful
    assert spec["terminationGracePeriodSeconds"] >= 30
    grace = compose_service("operator-1")["stop_grace_period"]
    assert seconds(grace) > graceful_shutdown_seconds(compose_service("operator-1")["command"])


def test_pods_run_non_root_with_a_read_only_root_filesystem() -> None:
    spec = pod_spec()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == image_uid() != 0
    assert spec.get("automountServiceAccountToken") is False
    for container in [operator_container(), init_container()]:
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True, container["name"]
        assert ctx["allowPrivilegeEscalation"] is False, container["name"]
        assert ctx["capabilities"]["drop"] == ["ALL"], container["name"]
        mount, _ = mount_for(container, "/tmp/x")
        assert mount["mountPath"] == "/tmp" and "emptyDir" in volumes()[mount["name"]]
        assert {"requests", "limits"} <= container["resources"].keys()
    resources = operator_container()["resources"]
    # One uvicorn worker per core: the default `serve` runs one worker.
    assert "--workers" not in operator_container()["args"]
    assert resources["requests"]["cpu"] in ("1", 1, "1000m")


def test_the_service_selects_the_deployment_and_targets_the_named_port() -> None:
    service = k8s_object("Service")
    dep = deployment()
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector and selector.items() <= pod_labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    port_names = {p["name"]: p["containerPort"] for p in operator_container()["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in port_names, "target the container port by name"
    assert "sessionAffinity" not in service["spec"] or service["spec"]["sessionAffinity"] == "None"


def test_the_pdb_and_the_hpa_target_the_deployment() -> None:
    dep = deployment()
    pdb = k8s_object("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["minAvailable"] == 1 < dep["spec"]["replicas"]
    hpa = k8s_object("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        dep["apiVersion"],
        "Deployment",
        dep["metadata"]["name"],
    )
    assert hpa["spec"]["minReplicas"] == dep["spec"]["replicas"] == 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    # Utilization is relative to the request, so the container must request CPU.
    assert operator_container()["resources"]["requests"]["cpu"]


def test_the_dockerfile() -> None:
    preamble, stages = dockerfile()
    assert len(stages) >= 2, "multi-stage: build the wheel in a builder stage"
    bases = {s.base for s in stages}
    base_args = {i.value for i in preamble if i.keyword == "ARG"}
    assert bases == {"${PYTHON_IMAGE}"} and "PYTHON_IMAGE=python:3.12-slim" in base_args
    builder, final = stages[0], final_stage()
    assert any("pip wheel" in run for run in builder.all("RUN"))
    assert any(c.startswith("--from=builder ") for c in final.all("COPY"))
    # No compiler (nor package installs at all) in the image that runs.
    for run in final.all("RUN"):
        assert not re.search(r"\b(apt-get|apk|gcc|g\+\+|build-essential|clang)\b", run), run
    assert image_uid() != 0
    assert any("PYTHONDONTWRITEBYTECODE=1" in env for env in final.all("ENV"))
    # The healthcheck: Python's urllib (there is no curl) against /healthz on the served port.
    check = final.one("HEALTHCHECK")
    assert "CMD" in check.split()
    probe = json.loads(check.split(" CMD ", 1)[1])
    port = flag(image_command(), "--port")
    assert probe[0] == "python" and "urllib" in probe[-1]
    assert f"127.0.0.1:{port}/healthz" in probe[-1]
    assert port in final.one("EXPOSE").split()
    # Writable paths: the declared volume holds keys_dir and the VAPID key of the compose
    # configuration; the configuration is mounted where --config says.
    (declared,) = json.loads(final.one("VOLUME"))
    settings = settings_from((DEPLOY / "compose" / "operator.toml").read_text())
    assert PurePosixPath(declared) in PurePosixPath(settings.keys_dir).parents
    assert PurePosixPath(declared) in PurePosixPath(settings.push.vapid_private_key_file).parents
    assert flag(image_command(), "--config") == "/etc/idtoken/operator.toml"
    # Every COPY from the build context exists and is not excluded by /.dockerignore.
    for stage in stages:
        for copy in stage.all("COPY"):
            words = [w for w in copy.split() if not w.startswith("--")]
            if copy.startswith("--from="):
                continue
            for source in words[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert not dockerignore_excludes(source.rstrip("/")), f"{source} is ignored"


def test_the_dockerignore_keeps_the_context_small() -> None:
    needed = ["pyproject.toml", "README.md"]
    needed += [
        str(p.relative_to(REPO))
        for p in (REPO / "operator").rglob("*")
        if p.is_file()
        and not any(part == "__pycache__" or part.endswith(".egg-info") for part in p.parts)
    ]
    for path in needed:
        assert not dockerignore_excludes(path), f"{path} is needed to build the wheel"
    for path in [
        ".git/HEAD",
        ".venv/bin/python",
        "var/keys/x.pem",
        "tests/test_deploy.py",
        "operator/idtoken/__pycache__/app.cpython-312.pyc",
        "deploy/k8s/secret.yaml",
    ]:
        assert dockerignore_excludes(path), f"{path} should not be in the build context"


def test_compose_files_and_commands() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "init-keys", *OPERATOR_SERVICES, "proxy"}
    command = image_command()
    configs = set()
    states = set()
    for name in OPERATOR_SERVICES:
        service = services[name]
        build = service["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert ["idtoken-operator", *service["command"]] == command
        assert "entrypoint" not in service
        volumes_ = compose_mounts(service)
        config_path = flag(command, "--config")
        source, mode = volumes_[config_path]
        assert mode == "ro"
        configs.add(source)
        settings = settings_from((COMPOSE.parent / source).read_text())
        state = next(
            (t, s) for t, (s, _) in volumes_.items() if Path(settings.keys_dir).is_relative_to(t)
        )
        assert Path(settings.push.vapid_private_key_file).is_relative_to(state[0])
        assert state[1] in compose()["volumes"], "keys must be on a named volume"
        states.add(state)
        assert service["read_only"] is True
        assert any(t.split(":")[0] == "/tmp" for t in service["tmpfs"])
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["depends_on"]["init-keys"]["condition"] == "service_completed_successfully"
        assert "ports" not in service, "only the proxy is published"
        env = service["environment"]
        assert "@redis:6379" in env["IDTOKEN_REDIS_URL"]
    assert len(configs) == 1 and len(states) == 1, "both operators: same config, same keys"
    # init-keys creates the keys where the operators find them, then checks the configuration.
    init = services["init-keys"]
    assert compose_mounts(init) == compose_mounts(services["operator-1"])
    script = init["command"][0]
    assert "idtoken-operator keys generate --config /etc/idtoken/operator.toml" in script
    assert "idtoken-operator check-config --config /etc/idtoken/operator.toml" in script
    # Every host path that is mounted exists.
    for service in services.values():
        for source, _ in compose_mounts(service).values():
            if source.startswith("."):
                assert (COMPOSE.parent / source).is_file(), source


def test_compose_redis() -> None:
    redis = compose_service("redis")
    assert redis["image"].startswith("redis:")
    assert redis["command"][:2] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    source, mode = compose_mounts(redis)["/usr/local/etc/redis/redis.conf"]
    assert (COMPOSE.parent / source).resolve() == DEPLOY / "redis.conf" and mode == "ro"
    assert compose_mounts(redis)["/data"][0] in compose()["volumes"]
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert "ports" not in redis


def test_compose_proxy() -> None:
    proxy = compose_service("proxy")
    assert proxy["image"].startswith("nginx:")
    source, mode = compose_mounts(proxy)["/etc/nginx/nginx.conf"]
    assert (COMPOSE.parent / source).resolve() == DEPLOY / "nginx.conf" and mode == "ro"
    assert set(proxy["depends_on"]) == set(OPERATOR_SERVICES)
    assert proxy["read_only"] is True
    listen = nginx_http().one("server").value("listen")
    assert [p.split(":")[-1] for p in proxy["ports"]] == [listen]


def test_the_compose_configuration_passes_check_config() -> None:
    """check-config loads the file and every issuer key; the keys_dir it names (a container
    path) does not exist here, which check-config reports as "created on first start", and it
    does not read the VAPID key, so the container paths need no stand-in."""
    path = DEPLOY / "compose" / "operator.toml"
    settings = settings_from(path.read_text())
    assert settings.redis_url == "redis://redis:6379/0"
    assert str(settings.keys_dir).startswith("/var/lib/idtoken/")
    assert not settings.keys_dir.exists(), "a stray /var/lib/idtoken on this machine"
    done = subprocess.run(
        [operator_exe(), "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "configuration OK" in done.stdout and "store: redis" in done.stdout


def test_nginx_conf_does_the_proxys_job() -> None:
    http = nginx_http()
    assert seconds(http.value("client_header_timeout")) <= 10
    assert seconds(http.value("client_body_timeout")) <= 10
    from idtoken.api.body import MAX_BODY

    cap = http.value("client_max_body_size")
    assert cap.endswith("k") and int(cap[:-1]) * 1024 == MAX_BODY
    upstream = http.one("upstream")
    servers = [d.args[0] for d in upstream.find("server")]
    port = flag(image_command(), "--port")
    assert servers == [f"{name}:{port}" for name in OPERATOR_SERVICES]
    upgrade_map = next(d for d in http.find("map") if d.args[0] == "$http_upgrade")
    mapping = {d.name: d.args[0] for d in upgrade_map.block or []}
    assert mapping == {"default": "upgrade", "": "close"}
    upstream_name = upstream.args[0]
    for path in ("/", "/ws/"):
        location = nginx_location(path)
        assert location.value("proxy_pass") == f"http://{upstream_name}"
        assert location.value("proxy_http_version") == "1.1"
        headers = location.headers()
        # A location that sets any header inherits none: each must set the forwarded ones.
        assert headers["x-forwarded-for"] == "$remote_addr"
        assert headers["x-forwarded-proto"] == "$scheme"
        assert headers["host"] == "$host"
    ws = nginx_location("/ws/")
    headers = ws.headers()
    assert headers["upgrade"] == "$http_upgrade"
    assert headers["connection"] == "$connection_upgrade"
    assert ws.value("proxy_buffering") == "off"
    assert seconds(ws.value("proxy_read_timeout")) >= MAX_SESSION_TTL
    assert seconds(ws.value("proxy_send_timeout")) >= MAX_SESSION_TTL
    plain = nginx_location("/")
    assert plain.headers()["connection"] == ""
    assert seconds(plain.value("proxy_read_timeout")) < MAX_SESSION_TTL
    # Writes only under /tmp (read-only root filesystem in compose).
    paths = [nginx_conf().value("pid")]
    paths += [d.args[0] for d in http.walk() if d.name.endswith("_temp_path")]
    assert paths and all(p.startswith("/tmp/") for p in paths)


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    assert nginx, "nginx is not installed (scripts/test installs it)"
    text = (DEPLOY / "nginx.conf").read_text()
    for i, name in enumerate(OPERATOR_SERVICES):
        assert f"server {name}:" in text
        text = text.replace(f"server {name}:8000", f"server 127.0.0.1:{18001 + i}")
    text = text.replace("/tmp/", f"{tmp_path}/")
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    done = subprocess.run(
        [
            nginx,
            "-t",
            "-q",
            "-p",
            f"{tmp_path}/",
            "-e",
            str(tmp_path / "error.log"),
            "-c",
            str(conf),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _redis_directives() -> dict[str, str]:
    directives = {}
    for line in (DEPLOY / "redis.conf").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            directives[name.lower()] = value.strip()
    return directives


def test_redis_conf(tmp_path: Path) -> None:
    conf = _redis_directives()
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "everysec"
    assert conf["maxmemory-policy"] == "noeviction"
    assert conf["protected-mode"] == "yes"
    assert "bind" in conf
    assert "requirepass" not in conf, "the password comes from the environment"
    assert "requirepass" in (DEPLOY / "redis.conf").read_text()  # the placeholder comment
    # The real server accepts the file (unknown or misspelt directives stop it). TCP is off:
    # it listens on a socket in tmp_path only.
    server = shutil.which("redis-server")
    assert server, "redis-server is not installed (scripts/test installs it)"
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        [server, str(DEPLOY / "redis.conf"), "--port", "0", "--unixsocket", str(sock)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def cli(*args: str) -> str:
            return subprocess.run(
                ["redis-cli", "-s", str(sock), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout

        deadline = time.monotonic() + 10
        while proc.poll() is None and not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[0]
        for name in ("appendonly", "appendfsync", "maxmemory-policy"):
            for _ in range(50):
                out = cli("CONFIG", "GET", name)
                if "LOADING" not in out:
                    break
            assert out.split()[-1] == conf[name], out
        assert cli("PING").strip() == "PONG"
        assert (tmp_path / "appendonlydir").is_dir()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
