#!/usr/bin/env python3
"""Check the sidecars of a rendered default install against what their documentation asks,
for the versions the chart pins: flags, the CSI socket they share with pail, kubelet's
registration directory, and the RBAC rules csi-provisioner needs.

The table below is written from the sidecars' READMEs and deploy/kubernetes/rbac.yaml of
kubernetes-csi/node-driver-registrar v2.13, livenessprobe v2.15, external-provisioner v5.2.
Usage: check-sidecars.py RENDERED.yaml
"""

import sys

import yaml

KUBELET = "/var/lib/kubelet"
DRIVER = "s3.csi.pail.dev"

SIDECARS = {
    # container: (flags that must be there (prefix match), {mount path: host path or None})
    "node-driver-registrar": (
        ["--csi-address=/csi/csi.sock", f"--kubelet-registration-path={KUBELET}/plugins/{DRIVER}/csi.sock"],
        {"/csi": f"{KUBELET}/plugins/{DRIVER}", "/registration": f"{KUBELET}/plugins_registry"},
    ),
    "liveness-probe": (["--csi-address=/csi/csi.sock", "--http-endpoint=:"], {"/csi": None}),
    "csi-provisioner": (["--csi-address=/csi/csi.sock", "--leader-election"], {"/csi": None}),
}

# external-provisioner's ClusterRole (and a Role on leases with --leader-election).
PROVISIONER_RULES = [
    ("", "persistentvolumes", {"get", "list", "watch", "create", "delete"}),
    ("", "persistentvolumeclaims", {"get", "list", "watch", "update"}),
    ("storage.k8s.io", "storageclasses", {"get", "list", "watch"}),
    ("", "events", {"list", "watch", "create", "update", "patch"}),
    ("storage.k8s.io", "csinodes", {"get", "list", "watch"}),
    ("", "nodes", {"get", "list", "watch"}),
    ("storage.k8s.io", "volumeattachments", {"get", "list", "watch"}),
]
LEASE_RULE = ("coordination.k8s.io", "leases", {"get", "watch", "list", "delete", "update", "create"})


def fail(msg):
    print(f"check-sidecars: {msg}", file=sys.stderr)
    sys.exit(1)


def grants(roles, group, resource, verbs):
    for role in roles:
        for rule in role.get("rules", []):
            if group in rule.get("apiGroups", []) and resource in rule.get("resources", []):
                if verbs <= set(rule.get("verbs", [])):
                    return True
    return False


def main():
    docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
    pods = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("DaemonSet", "Deployment")}
    seen = set()
    for spec in pods.values():
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        containers = {c["name"]: c for c in spec["containers"]}
        pail = containers.get("pail")
        for name, (flags, mounts) in SIDECARS.items():
            c = containers.get(name)
            if not c:
                continue
            seen.add(name)
            args = c.get("args", [])
            for f in flags:
                if not any(a.startswith(f) for a in args):
                    fail(f"{name}: no {f} in {args}")
            by_path = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            for path, host in mounts.items():
                if path not in by_path:
                    fail(f"{name}: nothing mounted at {path}")
                vol = volumes[by_path[path]]
                if host and vol.get("hostPath", {}).get("path") != host:
                    fail(f"{name}: {path} is {vol}, not the host's {host}")
            # The socket it talks to is pail's: the same volume at /csi in both.
            pail_mounts = {m["mountPath"]: m["name"] for m in pail.get("volumeMounts", [])}
            if pail_mounts.get("/csi") != by_path["/csi"] or "--endpoint=unix:///csi/csi.sock" not in pail["args"]:
                fail(f"{name}: does not share pail's socket directory")
    missing = set(SIDECARS) - seen
    if missing:
        fail(f"the default install has no {sorted(missing)}")
    roles = [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-controller")]
    for group, resource, verbs in PROVISIONER_RULES:
        if not grants(roles, group, resource, verbs):
            fail(f"csi-provisioner needs {sorted(verbs)} on {group or 'core'}/{resource}")
    leases = [d for d in docs if d["kind"] == "Role"]
    if not grants(leases, *LEASE_RULE):
        fail("csi-provisioner --leader-election needs a Role on leases")
    print("check-sidecars: registrar, livenessprobe and provisioner match their docs")


main()
