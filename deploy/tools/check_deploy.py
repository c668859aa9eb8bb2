#!/usr/bin/env python3
"""Offline checks of everything under deploy/ and of docker-compose.yml (run by scripts/check-deploy).

1. Renders every Kustomize overlay with `kubectl kustomize` (the real kustomize inside kubectl).
2. Validates every built-in object strictly against the Kubernetes OpenAPI schemas of
   K8S_VERSION (PyPI kubernetes-validate), and every custom resource against the JSON Schemas
   converted from the CRDs vendored in deploy/schemas/ (unknown fields refused).
3. Checks the project's own rules: every Deployment has liveness/readiness probes on the ops
   port, requests and limits, the restricted securityContext, a PodDisruptionBudget, ...;
   secrets only by reference; KEDA consumer names match the code; every alert's runbook exists.
4. Validates docker-compose.yml against the Compose Specification schema (vendored); it
   publishes nothing on every interface and logs each amba container in to NATS as its own user.
5. Parses the NATS configs with nats-server (-t) and proves with a real server that the
   permissions refuse what they must (attribution may not call commission's payout API);
   reads every shipped server config's users: none holds `$JS.API.>` or `_INBOX.>` (nor another
   user's inboxes), and each consumer in the code has its grants.

Every problem is printed as `FAIL: ...`; the exit status is 1 when there was any.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import jsonschema
import kubernetes_validate
import yaml

K8S_VERSION = "1.31.0"
OVERLAYS = {"dev": {"stream_replicas": "1", "secrets_allowed": True, "autoscaling": False},
            "prod": {"stream_replicas": "3", "secrets_allowed": False, "autoscaling": True}}
SERVICES = ["enrollment", "attribution", "commission", "payout", "notification", "edge"]
IMAGE = "ghcr.io/amba/amba-affiliate"
# Variables whose values are secrets: only ever from a secretKeyRef.
SECRET_VARS = {"AMBA_DATABASE_URL", "AMBA_STRIPE_SECRET_KEY", "AMBA_STRIPE_WEBHOOK_SECRET",
               "AMBA_SMTP_URL", "AMBA_LINK_SECRET", "POSTGRES_PASSWORD"} | \
              {f"AMBA_DB_PASSWORD_{s.upper()}" for s in SERVICES if s != "edge"}
NATS_USERS = ["enrollment", "attribution", "commission", "payout", "notification", "edge", "tick", "ops", "migrate"]

failures = []
passed = 0


def fail(message):
    failures.append(message)
    print(f"FAIL: {message}", flush=True)


def ok(message):
    global passed
    passed += 1
    print(f"ok: {message}", flush=True)


# ------------------------------------------------------------------------------------------------
# rendering and schema validation


def render(kubectl, path):
    result = subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"`kubectl kustomize {path}` failed:\n{result.stderr.strip()}")
        return None
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def ident(doc):
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('name')}"


def crd_schema(schemas_dir, doc, cache):
    group, _, version = doc["apiVersion"].rpartition("/")
    name = f"{doc['kind'].lower()}-{group}-{version}.json"
    if name not in cache:
        path = os.path.join(schemas_dir, name)
        cache[name] = None
        if os.path.exists(path):
            with open(path) as f:
                schema = json.load(f)
            cache[name] = jsonschema.validators.validator_for(schema)(schema)
    return name, cache[name]


def validate_schemas(label, docs, schemas_dir):
    cache = {}
    bad = 0
    for doc in docs:
        where = f"{label}: {ident(doc)}"
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            continue
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            fail(f"{where} does not validate against Kubernetes {K8S_VERSION}: {path}: {e.message}")
            bad += 1
            continue
        except kubernetes_validate.SchemaNotFoundError:
            pass
        name, validator = crd_schema(schemas_dir, doc, cache)
        if validator is None:
            fail(f"{where}: {doc['apiVersion']} {doc['kind']} is neither built into Kubernetes "
                 f"{K8S_VERSION} nor vendored as deploy/schemas/{name}")
            bad += 1
            continue
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        for e in errors[:10]:
            path = ".".join(str(p) for p in e.path)
            fail(f"{where} does not validate against deploy/schemas/{name}: {path}: {e.message[:300]}")
        bad += bool(errors)
    if not bad:
        ok(f"{label}: {len(docs)} objects validate (Kubernetes {K8S_VERSION} strict, CRDs from deploy/schemas)")


# ------------------------------------------------------------------------------------------------
# the project's rules for the rendered manifests


def pod_spec(doc):
    spec = doc.get("spec") or {}
    if doc["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"], spec["jobTemplate"]["spec"]["template"]
    return spec["template"]["spec"], spec["template"]


def effective_env(container, configmaps):
    env = {}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref:
            data = configmaps.get(ref["name"])
            if data is None:
                env["__missing__"] = ref["name"]
            else:
                env.update(data)
    for var in container.get("env") or []:
        env[var["name"]] = var.get("value", var.get("valueFrom"))
    return env


def check_secret_refs(label, doc, spec):
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        for var in c.get("env") or []:
            if var["name"] in SECRET_VARS and "value" in var:
                fail(f"{label}: {ident(doc)} container {c['name']}: {var['name']} is inlined; "
                     f"use valueFrom.secretKeyRef")


def check_deployment(label, doc, configmaps, pdbs, cfg):
    name = doc["metadata"]["name"]
    where = f"{label}: Deployment/{name}"
    spec, template = pod_spec(doc)
    problems = []
    psc = spec.get("securityContext") or {}
    if spec.get("terminationGracePeriodSeconds") != 45:
        problems.append("terminationGracePeriodSeconds must be 45 (the drain takes up to ~30 s)")
    if not spec.get("topologySpreadConstraints"):
        problems.append("no topologySpreadConstraints")
    if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") != 10001:
        problems.append("pod securityContext needs runAsNonRoot: true and runAsUser: 10001")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("pod securityContext needs seccompProfile RuntimeDefault")
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for c in spec.get("containers", []):
        cw = f"container {c['name']}"
        for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
            get = (c.get(probe) or {}).get("httpGet") or {}
            if get.get("path") != path or get.get("port") not in (9090, "ops"):
                problems.append(f"{cw}: {probe} must be GET {path} on the ops port 9090")
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        if ports.get("ops") != 9090:
            problems.append(f"{cw}: no port `ops` 9090")
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if not (res.get(kind) or {}).get(r):
                    problems.append(f"{cw}: resources.{kind}.{r} missing")
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cw}: allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cw}: readOnlyRootFilesystem must be true")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{cw}: capabilities must drop ALL")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            problems.append(f"{cw}: runAsNonRoot must be true")
        if sc.get("runAsUser", psc.get("runAsUser")) != 10001:
            problems.append(f"{cw}: runAsUser must be 10001")
        if ((sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")) != "RuntimeDefault":
            problems.append(f"{cw}: seccompProfile must be RuntimeDefault")
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}
        tmp = mounts.get("/tmp")
        if not tmp or "emptyDir" not in volumes.get(tmp["name"], {}):
            problems.append(f"{cw}: /tmp must be an emptyDir")
        if not str(c.get("image", "")).startswith(IMAGE):
            problems.append(f"{cw}: image must be {IMAGE}")
        if c.get("args") != ["serve", name]:
            problems.append(f"{cw}: args must be [serve, {name}]")
        env = effective_env(c, configmaps)
        if "__missing__" in env:
            problems.append(f"{cw}: envFrom names a ConfigMap that is not rendered: {env['__missing__']}")
        expect = {"AMBA_LOG_FORMAT": "json", "AMBA_METRICS_ADDR": "0.0.0.0:9090",
                  "AMBA_STREAM_REPLICAS": cfg["stream_replicas"],
                  "AMBA_NATS_CREDS": f"/etc/amba/nats/{name}.creds"}
        if name == "edge":
            expect.update({"AMBA_HTTP_ADDR": "0.0.0.0:8080", "AMBA_GRPC_ADDR": "0.0.0.0:50051"})
            for var in ("AMBA_PUBLIC_URL", "AMBA_ALLOWED_HOSTS", "AMBA_TRUSTED_PROXIES",
                        "AMBA_LINK_SECRET", "AMBA_STRIPE_WEBHOOK_SECRET"):
                if not env.get(var):
                    problems.append(f"{cw}: {var} is not set")
            if ports.get("http") != 8080 or ports.get("grpc") != 50051:
                problems.append(f"{cw}: ports http 8080 and grpc 50051 needed")
        else:
            if not isinstance(env.get("AMBA_DATABASE_URL"), dict):
                problems.append(f"{cw}: AMBA_DATABASE_URL must come from a secretKeyRef")
        if name == "notification" and not env.get("AMBA_LINK_SECRET"):
            # Without it e-mails carry no one-click unsubscribe link.
            problems.append(f"{cw}: AMBA_LINK_SECRET is not set")
        for var, value in expect.items():
            if env.get(var) != value:
                problems.append(f"{cw}: {var} must be {value!r}, is {env.get(var)!r}")
        creds = mounts.get("/etc/amba/nats")
        if not creds or "secret" not in volumes.get(creds["name"], {}):
            problems.append(f"{cw}: the NATS credentials Secret must be mounted at /etc/amba/nats")
        if env.get("AMBA_NATS_TLS_CA"):
            ca = mounts.get("/etc/amba/nats-ca")
            if env["AMBA_NATS_TLS_CA"] != "/etc/amba/nats-ca/ca.crt" or not ca or \
                    "secret" not in volumes.get(ca["name"], {}):
                problems.append(f"{cw}: AMBA_NATS_TLS_CA set but the CA Secret is not mounted at /etc/amba/nats-ca")
    labels = template["metadata"].get("labels") or {}
    covering = [p for p in pdbs if p["spec"].get("selector", {}).get("matchLabels")
                and all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items())]
    if not covering:
        problems.append("no PodDisruptionBudget selects its pods")
    for p in problems:
        fail(f"{where}: {p}")
    if not problems:
        ok(f"{where}: probes, resources, restricted securityContext, PDB, environment")


def code_consumers(repo):
    """{service: {consumer name: stream name}} from `ns.consumer(` in services/*/src/lib.rs."""
    found = {}
    for service in SERVICES:
        path = os.path.join(repo, "services", service, "src", "lib.rs")
        if not os.path.exists(path):
            continue
        text = re.sub(r"\s+", " ", open(path).read())
        pairs = re.findall(r'events_stream\("(\w+)"\), (?:bus\.)?ns\.consumer\(SERVICE, "(\w+)"\)', text)
        # notification: `for (stream, filter) in sources { ... ns.consumer(SERVICE, stream) ...}`
        if re.search(r"ns\.consumer\(SERVICE, stream\)", text):
            block = re.search(r"let sources = \[(.*?)\];", text)
            if block:
                pairs += [(s, s) for s in re.findall(r'\("(\w+)", (?:String::new\(\)|ns\.event\()', block.group(1))]
        if pairs:
            found[service] = {f"AMBA_{service}_{purpose}".upper(): f"AMBA_EVT_{stream}".upper()
                              for stream, purpose in pairs}
    return found


def check_rendered(label, docs, cfg, repo):
    before = len(failures)
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    by_kind = lambda kind: {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}

    missing = [s for s in SERVICES if s not in deployments]
    if missing:
        fail(f"{label}: no Deployment for {', '.join(missing)}")
    for name in SERVICES:
        if name in deployments:
            check_deployment(label, deployments[name], configmaps, pdbs, cfg)

    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob", "DaemonSet"):
            check_secret_refs(label, doc, pod_spec(doc)[0])
        if doc["kind"] == "Secret" and not cfg["secrets_allowed"]:
            fail(f"{label}: {ident(doc)}: Secrets are never rendered in this overlay (create them; docs/deploy.md)")
        if doc["kind"] != "Namespace" and (doc.get("metadata") or {}).get("namespace") != "amba":
            fail(f"{label}: {ident(doc)} is not in namespace amba")

    # edge: Service, Ingress, HPA
    svc = by_kind("Service").get("edge")
    if not svc or {p["port"] for p in svc["spec"]["ports"]} != {8080, 50051}:
        fail(f"{label}: Service/edge must expose 8080 and 50051")
    backends = {(p["backend"]["service"]["name"], p["backend"]["service"]["port"].get("name"))
                for ing in by_kind("Ingress").values() for r in ing["spec"]["rules"]
                for p in r["http"]["paths"]}
    if not {("edge", "http"), ("edge", "grpc")} <= backends:
        fail(f"{label}: Ingresses must route to edge:http and edge:grpc")
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind("HorizontalPodAutoscaler").values()}
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in by_kind("ScaledObject").values()}
    if cfg["autoscaling"]:
        for name in ("edge", "attribution"):
            h = hpas.get(name)
            if not h or not any(m.get("resource", {}).get("name") == "cpu" for m in h["spec"]["metrics"]):
                fail(f"{label}: {name} needs an HPA on CPU")
        consumers = code_consumers(repo)
        for name in ("commission", "payout", "notification"):
            so = scaled.get(name)
            if not so:
                fail(f"{label}: {name} needs a KEDA ScaledObject")
                continue
            triggers = {t["metadata"]["consumer"]: t["metadata"]["stream"] for t in so["spec"]["triggers"]
                        if t["type"] == "nats-jetstream"}
            expected = consumers.get(name)
            if not expected:
                fail(f"{label}: found no `ns.consumer(` of {name} in services/{name}/src/lib.rs")
            elif triggers != expected:
                fail(f"{label}: ScaledObject/{name} triggers {sorted(triggers.items())} differ from the "
                     f"consumers in the code {sorted(expected.items())}")
            else:
                ok(f"{label}: ScaledObject/{name} scales on the lag of {', '.join(sorted(expected))}")

    # jobs
    jobs, crons = by_kind("Job"), by_kind("CronJob")
    migrate = jobs.get("amba-migrate")
    if not migrate or pod_spec(migrate)[0]["containers"][0].get("args") != ["migrate"]:
        fail(f"{label}: Job/amba-migrate must run `amba migrate`")
    tick = crons.get("amba-tick")
    if not tick or tick["spec"].get("concurrencyPolicy") != "Forbid" or \
            pod_spec(tick)[0]["containers"][0].get("args") != ["tick"]:
        fail(f"{label}: CronJob/amba-tick must run `amba tick` with concurrencyPolicy Forbid")
    verify = crons.get("amba-ledger-verify")
    if not verify or pod_spec(verify)[0]["containers"][0].get("args") != ["ledger", "verify"]:
        fail(f"{label}: CronJob/amba-ledger-verify must run `amba ledger verify`")

    # network policies
    policies = by_kind("NetworkPolicy")
    if not any(p["spec"].get("podSelector") == {} and "Ingress" in p["spec"].get("policyTypes", [])
               and not p["spec"].get("ingress") for p in policies.values()):
        fail(f"{label}: no default-deny ingress NetworkPolicy")

    # alerts: every runbook_url names a section of docs/runbooks.md
    anchors = runbook_anchors(repo)
    for rule in by_kind("PrometheusRule").values():
        for group in rule["spec"]["groups"]:
            for r in group["rules"]:
                if "alert" not in r:
                    continue
                url = (r.get("annotations") or {}).get("runbook_url", "")
                anchor = url.partition("docs/runbooks.md#")[2]
                if anchor not in anchors:
                    fail(f"{label}: alert {r['alert']}: runbook_url {url!r} names no section of docs/runbooks.md")
    if len(failures) == before:
        ok(f"{label}: edge exposure, autoscaling, jobs, network policies, alert runbooks")


def check_database_roles(label, docs):
    """Each service's Deployment logs in to PostgreSQL with a Secret of its own (its role
    amba_<service>, granted its own schema by `amba migrate`): never the owner's Secret that the
    migration Job uses, never another service's. With a CloudNativePG Cluster, that Secret holds
    the password of the Cluster's managed role amba_<service>, an unprivileged login role."""
    def database_secret(doc):
        for c in pod_spec(doc)[0].get("containers", []):
            for var in c.get("env") or []:
                if var["name"] == "AMBA_DATABASE_URL":
                    return ((var.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name")
        return None

    before = len(failures)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    migrate = next((d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "amba-migrate"), None)
    owner = database_secret(migrate) if migrate else None
    secrets = {s: database_secret(deployments[s]) for s in SERVICES if s != "edge" and s in deployments}
    for service, secret in secrets.items():
        where = f"{label}: Deployment/{service}"
        sharing = sorted(other for other, theirs in secrets.items() if theirs == secret and other != service)
        if not secret:
            fail(f"{where}: AMBA_DATABASE_URL must come from a Secret of its own (amba-db-{service})")
        elif secret == owner:
            fail(f"{where}: AMBA_DATABASE_URL uses the owner's Secret {secret} (the migration Job's); "
                 f"the service's own role needs its own Secret (amba-db-{service})")
        elif sharing:
            fail(f"{where}: its database Secret {secret} is also {', '.join(sharing)}'s: one Secret "
                 f"(one role) per service")
    for cluster in (d for d in docs if d["kind"] == "Cluster" and d["apiVersion"].startswith("postgresql.cnpg.io/")):
        roles = {r["name"]: r for r in ((cluster["spec"].get("managed") or {}).get("roles") or [])}
        for service, secret in secrets.items():
            role = roles.get(f"amba_{service}") or {}
            privileged = [k for k in ("superuser", "createrole", "createdb", "replication", "bypassrls") if role.get(k)]
            if role.get("ensure", "present") != "present" or role.get("login") is not True or \
                    (role.get("passwordSecret") or {}).get("name") != secret or privileged:
                has = f" (it has {', '.join(privileged)})" if privileged else ""
                fail(f"{label}: {ident(cluster)}: needs the managed role amba_{service}: present, login, "
                     f"passwordSecret {secret} (Deployment/{service}'s database Secret), no superuser, "
                     f"createrole, createdb, replication or bypassrls{has}")
    if len(failures) == before:
        ok(f"{label}: each service's Deployment has a database Secret (a role) of its own, not the owner's")


def runbook_anchors(repo):
    path = os.path.join(repo, "docs", "runbooks.md")
    anchors = set()
    if os.path.exists(path):
        for line in open(path):
            m = re.match(r"#{1,6} (.*)", line)
            if m:
                # GitHub's rule: lower case, drop punctuation except - and _, spaces to -
                text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
                anchors.add(text.replace(" ", "-"))
    return anchors


# ------------------------------------------------------------------------------------------------
# docker-compose.yml


def check_compose(repo, schemas_dir):
    path = os.path.join(repo, "docker-compose.yml")
    with open(path) as f:
        compose = yaml.safe_load(f)
    with open(os.path.join(schemas_dir, "compose-spec.json")) as f:
        schema = json.load(f)
    # the schema says draft-07 (its $schema URL lacks the '#' jsonschema looks for)
    validator = jsonschema.Draft7Validator(schema)
    errors = list(validator.iter_errors(compose))
    for e in errors[:20]:
        fail(f"docker-compose.yml: {'.'.join(str(p) for p in e.path)}: {e.message[:300]}")
    problems = []
    for name, svc in (compose.get("services") or {}).items():
        one_shot = svc.get("restart") == "no"
        if not one_shot and not (svc.get("healthcheck") or {}).get("test"):
            problems.append(f"service {name} has no healthcheck")
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        for var, value in env.items():
            value = str(value)
            secret = var in SECRET_VARS and (var != "AMBA_SMTP_URL" or "@" in value)
            if (secret or "PASSWORD" in var) and value and "${" not in value:
                problems.append(f"service {name}: {var} has a value baked in; use ${{{var}:?...}}")
            if "://" in value and "@" in value and "${" not in value.split("@")[0]:
                problems.append(f"service {name}: {var} has credentials baked in")
        if "amba-affiliate" in str(svc.get("image", "")) and not one_shot:
            if env.get("AMBA_METRICS_ADDR") != "0.0.0.0:9090":
                problems.append(f"service {name}: AMBA_METRICS_ADDR must be 0.0.0.0:9090")
    for p in problems:
        fail(f"docker-compose.yml: {p}")
    if not errors and not problems:
        ok("docker-compose.yml validates against the Compose Specification; health checks; no baked-in secrets")
    example = os.path.join(repo, ".env.example")
    if not os.path.exists(example):
        fail(".env.example is missing (docker-compose.yml reads its required values from .env)")


def host_of_port(port):
    """The host address a compose `ports` entry publishes on; None for every interface."""
    if isinstance(port, dict):
        # long syntax; without `published` the host port is random, still on host_ip
        return port.get("host_ip") or None
    text = str(port).split("/")[0]
    if text.startswith("["):
        return text[1:text.index("]")]
    parts = text.split(":")
    # HOST:PUBLISHED:TARGET; PUBLISHED:TARGET and TARGET publish on every interface
    return parts[0] if len(parts) == 3 else None


def check_compose_exposure(repo):
    """Nothing reachable from other machines: every published port is bound to loopback (a
    PostgreSQL or NATS on 0.0.0.0 is anyone's who reaches the host). And each amba container
    logs in to NATS as its own user, with only its own credentials file."""
    compose = yaml.safe_load(open(os.path.join(repo, "docker-compose.yml")))
    before = len(failures)
    for name, svc in (compose.get("services") or {}).items():
        if svc.get("network_mode") == "host":
            fail(f"docker-compose.yml: service {name}: network_mode host publishes every port it listens on")
        for port in svc.get("ports") or []:
            host = host_of_port(port)
            if host not in ("127.0.0.1", "::1", "localhost"):
                fail(f"docker-compose.yml: service {name} publishes {port!r} on {host or 'every interface'}; "
                     f"bind it to 127.0.0.1 (\"127.0.0.1:<port>:<port>\") or do not publish it")
        if "amba-affiliate" not in str(svc.get("image", "")):
            continue
        user = "migrate" if svc.get("command") == ["migrate"] else (svc.get("command") or ["", ""])[-1]
        env = svc.get("environment") or {}
        creds = f"/etc/amba/nats/{user}.creds"
        mounts = [str(v) for v in svc.get("volumes") or []]
        if env.get("AMBA_NATS_CREDS") != creds or \
                mounts != [f"./.amba/compose/nats/{user}.creds:{creds}:ro"]:
            fail(f"docker-compose.yml: service {name} must log in to NATS as {user}: AMBA_NATS_CREDS={creds} "
                 f"and only its own ./.amba/compose/nats/{user}.creds mounted there (scripts/compose-nats-users)")
    nats = (compose.get("services") or {}).get("nats") or {}
    if "./deploy/nats/accounts.conf:/etc/nats/accounts.conf:ro" not in (nats.get("volumes") or []) or \
            not re.search(r"(?m)^include \./accounts\.conf", open(os.path.join(repo, "deploy/nats/compose.conf")).read()):
        fail("docker-compose.yml: NATS must run with the users of deploy/nats/accounts.conf "
             "(mounted beside compose.conf, which includes it)")
    if len(failures) == before:
        ok("docker-compose.yml publishes on 127.0.0.1 only; each amba container is its own NATS user")


def check_nats_jobs(label, docs):
    """The Jobs that talk to NATS log in as their own user, with the CA where the config asks
    for TLS: `amba migrate` (declares streams and consumers) and `amba tick`."""
    before = len(failures)
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    jobs = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("Job", "CronJob")}
    for (kind, name), user in ((("Job", "amba-migrate"), "migrate"), (("CronJob", "amba-tick"), "tick")):
        doc = jobs.get((kind, name))
        if not doc:
            continue
        spec = pod_spec(doc)[0]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for c in spec.get("containers", []):
            env = effective_env(c, configmaps)
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}
            creds = mounts.get("/etc/amba/nats")
            secret = (volumes.get(creds["name"], {}) if creds else {}).get("secret") or {}
            if env.get("AMBA_NATS_CREDS") != f"/etc/amba/nats/{user}.creds" or \
                    [i.get("key") for i in secret.get("items") or []] != [f"{user}.creds"]:
                fail(f"{label}: {kind}/{name}: must log in to NATS as {user} (AMBA_NATS_CREDS "
                     f"/etc/amba/nats/{user}.creds, only that key of the Secret mounted)")
            if env.get("AMBA_NATS_TLS_CA") and "/etc/amba/nats-ca" not in mounts:
                fail(f"{label}: {kind}/{name}: AMBA_NATS_TLS_CA set but the CA Secret is not mounted at /etc/amba/nats-ca")
    if len(failures) == before:
        ok(f"{label}: the migration Job and the tick CronJob log in to NATS as their own users")


# ------------------------------------------------------------------------------------------------
# NATS


def nats_env():
    env = dict(os.environ)
    for user in NATS_USERS:
        env[f"NATS_{user.upper()}_PASSWORD"] = f"check-{user}"
    return env


def nats_test_config(nats_server, path, env):
    result = subprocess.run([nats_server, "-t", "-c", path], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        fail(f"nats-server rejects {path}: {(result.stderr or result.stdout).strip()}")
        return False
    return True


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nats_session(port, user, password, commands):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.recv(4096)
        connect = {"verbose": False, "pedantic": False, "user": user, "pass": password,
                   "protocol": 1, "headers": True, "no_responders": True}
        s.sendall(f"CONNECT {json.dumps(connect)}\r\n".encode())
        for command in commands:
            s.sendall(command.encode())
        s.sendall(b"PING\r\n")
        data = b""
        deadline = time.time() + 5
        while b"PONG" not in data and b"-ERR 'Authorization" not in data and time.time() < deadline:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.decode(errors="replace")


def check_nats(repo, nats_server):
    env = nats_env()
    nats_dir = os.path.join(repo, "deploy", "nats")
    good = nats_test_config(nats_server, os.path.join(nats_dir, "accounts.conf"), env)
    good &= nats_test_config(nats_server, os.path.join(nats_dir, "test-accounts.conf"), env)
    # accounts.conf and test-accounts.conf differ only in the passwords
    strip = lambda text: re.sub(r"password: \S+", "password: X", re.sub(r"(?m)^#.*\n", "", text))
    if strip(open(os.path.join(nats_dir, "accounts.conf")).read()) != \
            strip(open(os.path.join(nats_dir, "test-accounts.conf")).read()):
        fail("deploy/nats/test-accounts.conf differs from accounts.conf in more than the passwords")
        good = False
    # the dev server's config, laid out as in the pod (/etc/nats-config + /etc/nats-accounts)
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "nats-config"))
        os.makedirs(os.path.join(tmp, "nats-accounts"))
        shutil.copy(os.path.join(repo, "deploy/k8s/overlays/dev/nats.conf"), os.path.join(tmp, "nats-config"))
        shutil.copy(os.path.join(nats_dir, "accounts.conf"), os.path.join(tmp, "nats-accounts"))
        good &= nats_test_config(nats_server, os.path.join(tmp, "nats-config", "nats.conf"), env)
        # compose's, laid out as docker-compose.yml mounts it (/etc/nats/{nats,accounts}.conf)
        os.makedirs(os.path.join(tmp, "compose"))
        shutil.copy(os.path.join(nats_dir, "compose.conf"), os.path.join(tmp, "compose", "nats.conf"))
        shutil.copy(os.path.join(nats_dir, "accounts.conf"), os.path.join(tmp, "compose"))
        good &= nats_test_config(nats_server, os.path.join(tmp, "compose", "nats.conf"), env)
        conf = open(os.path.join(repo, "deploy/k8s/overlays/dev/nats.conf")).read()
        if not re.search(r"sync_interval:\s*always", conf):
            fail("deploy/k8s/overlays/dev/nats.conf: jetstream needs sync_interval: always")
            good = False

        # a real server with the test config: permissions allow and refuse what they must
        port = free_port()
        server = subprocess.Popen([nats_server, "-c", os.path.join(nats_dir, "test-accounts.conf"),
                                   "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", os.path.join(tmp, "js")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 10
            while time.time() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            cases = [
                ("attribution", "PUB amba.rpc.commission.payout_post 0\r\n\r\n", False),
                ("edge", "PUB amba.rpc.commission.payout_post 0\r\n\r\n", False),
                ("payout", "PUB amba.rpc.commission.payout_post 0\r\n\r\n", True),
                ("edge", "PUB amba.rpc.attribution.report_batch 0\r\n\r\n", True),
                # every method the edge calls is granted (crates/proto/src/nats_grants.rs checks all)
                ("edge", "PUB amba.rpc.commission.release_held 0\r\n\r\n", True),
                ("attribution", "PUB amba.evt.conversion.approved 0\r\n\r\n", True),
                ("attribution", "PUB amba.evt.commission.accrued 0\r\n\r\n", False),
                ("notification", "SUB amba.rpc.commission.* 1\r\n", False),
                ("tick", "PUB amba.evt.settlement.tick 0\r\n\r\n", True),
                # each user reads its own inboxes only, and only `migrate` declares on JetStream
                ("edge", "SUB _INBOX_edge.> 1\r\n", True),
                ("notification", "SUB _INBOX_edge.> 1\r\n", False),
                ("notification", "SUB _INBOX.> 1\r\n", False),
                ("notification", "PUB $JS.API.STREAM.PURGE.AMBA_EVT_ENROLLMENT 0\r\n\r\n", False),
                ("notification", "PUB amba.evt.stripe.account_updated 0\r\n\r\n", False),
                ("notification", "PUB $JS.API.CONSUMER.MSG.NEXT.AMBA_EVT_PAYOUT.AMBA_NOTIFICATION_PAYOUT 0\r\n\r\n", True),
                ("notification", "PUB $JS.API.CONSUMER.MSG.NEXT.AMBA_EVT_EDGE.AMBA_PAYOUT_OUTSIDE 0\r\n\r\n", False),
                ("payout", "PUB $JS.API.CONSUMER.CREATE.AMBA_EVT_EDGE.AMBA_PAYOUT_OUTSIDE 0\r\n\r\n", False),
                ("migrate", "PUB $JS.API.STREAM.DELETE.AMBA_EVT_ENROLLMENT 0\r\n\r\n", False),
                ("migrate", "SUB _INBOX_migrate.> 1\r\n", True),
            ]
            for user, command, allowed in cases:
                reply = nats_session(port, user, f"{user}-test-password", [command])
                refused = "Permissions Violation" in reply or "Authorization" in reply
                what = command.split("\r\n")[0]
                if refused == allowed:
                    last = reply.strip().splitlines()[-1] if reply.strip() else "no answer"
                    fail(f"NATS test config: {user} `{what}` was {'refused' if refused else 'allowed'} "
                         f"(expected {'allowed' if allowed else 'refused'}): {last}")
                    good = False
        finally:
            server.terminate()
            server.wait(timeout=10)
    values = yaml.safe_load(open(os.path.join(nats_dir, "values.yaml")))
    cfg = values.get("config", {})
    if cfg.get("jetstream", {}).get("merge", {}).get("sync_interval") != "always" or \
            not cfg.get("cluster", {}).get("enabled") or cfg.get("cluster", {}).get("replicas") != 3 or \
            not cfg.get("nats", {}).get("tls", {}).get("enabled") or \
            "accounts.conf" not in str(cfg.get("merge", {})):
        fail("deploy/nats/values.yaml: needs 3 clustered servers, TLS, sync_interval always, accounts.conf")
        good = False
    if good:
        ok("NATS: accounts.conf, test-accounts.conf, the dev server config and the chart values are "
           "valid; a live server refuses what the permissions forbid")


def nats_conf(path):
    """A nats-server config file as Python values (dicts, lists, strings), `include`s merged in
    (relative to the including file). Enough of the format for the shipped files: `{}` maps,
    `[]` lists, `key: value`, `key = value` and `key value`, quoted and bare strings, `#` and
    `//` comments, newlines or commas between entries."""
    text = open(path).read()
    tokens, i = [], 0
    while i < len(text):
        c = text[i]
        if c in " \t\r":
            i += 1
        elif c == "#" or text.startswith("//", i):
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        elif c in "\n,;":
            tokens.append(("sep", c))
            i += 1
        elif c in "{}[]:=":
            tokens.append((c, c))
            i += 1
        elif c in "\"'":
            end = text.index(c, i + 1)
            tokens.append(("str", text[i + 1:end]))
            i = end + 1
        else:
            start = i
            while i < len(text) and text[i] not in " \t\r\n,;{}[]:=#":
                i += 1
            tokens.append(("str", text[start:i]))
    tokens.append(("eof", ""))

    def skip(j):
        while tokens[j][0] == "sep":
            j += 1
        return j

    def value(j):
        kind, word = tokens[j]
        if kind == "{":
            return entries(j + 1, "}")
        if kind == "[":
            items, j = [], skip(j + 1)
            while tokens[j][0] != "]":
                item, j = value(j)
                items.append(item)
                j = skip(j)
            return items, j + 1
        return word, j + 1

    def entries(j, end):
        found = {}
        j = skip(j)
        while tokens[j][0] != end:
            key = tokens[j][1]
            j += 1
            if tokens[j][0] in (":", "="):
                j += 1
            item, j = value(j)
            if key == "include":
                found.update(nats_conf(os.path.join(os.path.dirname(path), item)))
            else:
                found[key] = item
            j = skip(j)
        return found, j + 1

    return entries(0, "eof")[0]


def nats_users(conf):
    """Every user of a parsed config: {name: permissions (None when unrestricted)}."""
    users = list((conf.get("authorization") or {}).get("users") or [])
    for account in (conf.get("accounts") or {}).values():
        users += account.get("users") or []
    return {u.get("user") or u.get("nkey"): u.get("permissions") for u in users}


def subject_covers(grant, subject):
    """Whether every subject `subject` (a pattern) matches is matched by `grant`."""
    g, s = grant.split("."), subject.split(".")
    for n, token in enumerate(g):
        if token == ">":
            return n < len(s)
        if n >= len(s) or s[n] == ">" or (token != "*" and (s[n] == "*" or token != s[n])):
            return False
    return len(g) == len(s)


def subjects_overlap(a, b):
    """Whether some subject is matched by both patterns."""
    x, y = a.split("."), b.split(".")
    for n in range(min(len(x), len(y))):
        if ">" in (x[n], y[n]):
            return True
        if "*" not in (x[n], y[n]) and x[n] != y[n]:
            return False
    return len(x) == len(y)


def allowed(permissions, direction):
    rules = (permissions or {}).get(direction)
    if isinstance(rules, dict):
        rules = rules.get("allow")
    return [rules] if isinstance(rules, str) else list(rules or [])


def check_nats_grants(repo):
    """Least privilege in every shipped server config: each user has permissions, none holds the
    whole JetStream API (`$JS.API.>`: purge, delete, read any stream) or the default inboxes
    (`_INBOX.>`: every rpc reply, signup's new tokens included) or another user's `_INBOX_<user>`;
    and each durable consumer in the code has its grants (its service's lookup, fetch and acks,
    `migrate`'s create)."""
    before = len(failures)
    nats_dir = os.path.join(repo, "deploy", "nats")
    configs = {name: os.path.join(nats_dir, name) for name in ("accounts.conf", "test-accounts.conf", "compose.conf")}
    with tempfile.TemporaryDirectory() as tmp:
        # the dev server's config includes accounts.conf from where the pod mounts it
        os.makedirs(os.path.join(tmp, "nats-config"))
        os.makedirs(os.path.join(tmp, "nats-accounts"))
        shutil.copy(os.path.join(repo, "deploy/k8s/overlays/dev/nats.conf"), os.path.join(tmp, "nats-config"))
        shutil.copy(configs["accounts.conf"], os.path.join(tmp, "nats-accounts"))
        parsed = {name: nats_users(nats_conf(path)) for name, path in configs.items()}
        parsed["overlays/dev/nats.conf"] = nats_users(nats_conf(os.path.join(tmp, "nats-config", "nats.conf")))
    for config, users in parsed.items():
        if sorted(users) != sorted(NATS_USERS):
            fail(f"NATS {config}: users {sorted(users)}, expected {sorted(NATS_USERS)}")
        for user, permissions in users.items():
            if not permissions:
                fail(f"NATS {config}: user {user} has no permissions (it may do anything)")
                continue
            for direction in ("publish", "subscribe"):
                for grant in allowed(permissions, direction):
                    if subject_covers(grant, "$JS.API.>"):
                        fail(f"NATS {config}: user {user} may {direction} {grant!r}: the whole JetStream API")
                    if subjects_overlap(grant, "_INBOX.>"):
                        fail(f"NATS {config}: user {user} may {direction} {grant!r}: the default inboxes, "
                             f"everyone's replies (its own are _INBOX_{user}.>)")
                    others = [u for u in users if u != user and subjects_overlap(grant, f"_INBOX_{u}.>")]
                    if direction == "subscribe" and others:
                        fail(f"NATS {config}: user {user} may subscribe {grant!r}: {', '.join(others)}'s inboxes")
    users = parsed["accounts.conf"]
    consumers = code_consumers(repo)
    for service in SERVICES:
        publish = allowed(users.get(service), "publish")
        need = {f"$JS.API.STREAM.INFO.AMBA_EVT_{service.upper()}"}
        for consumer, stream in consumers.get(service, {}).items():
            need |= {f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
                     f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", f"$JS.ACK.{stream}.{consumer}.>"}
            if not any(subject_covers(g, f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}")
                       for g in allowed(users.get("migrate"), "publish")):
                fail(f"NATS accounts.conf: migrate may not create {consumer} on {stream} (a consumer of "
                     f"services/{service}/src/lib.rs)")
        missing = sorted(n for n in need if not any(subject_covers(g, n) for g in publish))
        if missing:
            fail(f"NATS accounts.conf: {service} lacks what its streams and consumers need: {', '.join(missing)}")
    if len(failures) == before:
        ok("NATS: no user of a shipped config holds $JS.API.> or _INBOX.> (or another's inboxes); "
           "every consumer in the code has its grants")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True)
    parser.add_argument("--kubectl", required=True)
    parser.add_argument("--nats-server", required=True)
    args = parser.parse_args()
    schemas_dir = os.path.join(args.repo, "deploy", "schemas")
    for overlay, cfg in OVERLAYS.items():
        path = os.path.join(args.repo, "deploy", "k8s", "overlays", overlay)
        docs = render(args.kubectl, path)
        if docs is None:
            continue
        ok(f"overlays/{overlay} renders ({len(docs)} objects)")
        validate_schemas(f"overlays/{overlay}", docs, schemas_dir)
        check_rendered(f"overlays/{overlay}", docs, cfg, args.repo)
        check_database_roles(f"overlays/{overlay}", docs)
        check_nats_jobs(f"overlays/{overlay}", docs)
    check_compose(args.repo, schemas_dir)
    check_compose_exposure(args.repo)
    check_nats(args.repo, args.nats_server)
    check_nats_grants(args.repo)
    if failures:
        print(f"\ncheck-deploy: {len(failures)} problem(s) (see FAIL lines above); {passed} check(s) fine",
              file=sys.stderr)
        sys.exit(1)
    print(f"\ncheck-deploy: all {passed} checks fine")


if __name__ == "__main__":
    main()
