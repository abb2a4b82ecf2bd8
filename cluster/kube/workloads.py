"""The harness's own test workloads on a real cluster: a Deployment and a VirtualMachine.

Filled by nobody (templates); read by ``KubeProvisioner.create_workload``. Both
answer the prober's contract on port 8080 (``cluster.api.ProbeTarget``): a 200
with the body ``<workload> <instance>``, where the instance changes on every
restart, so a restart is told from a recovery of the same process.

- Pod: busybox ``httpd`` with a CGI ``/cgi-bin/healthz``, the same shape as the
  lab's pods. The instance is a random UUID drawn when the container starts:
  a container restart in the same pod (the kubelet's restart after a process
  crash) gets a new one, as a new pod does. Given a volume (the config's
  ``pod_volume_host_path``, which the lab sets), it is mounted at ``/data``
  and every health check writes and reads back a file there: 503 on an I/O
  error, no answer while the volume is frozen.
- VMI: a CirrOS guest whose cloud-init user data (NoCloud; CirrOS runs a user
  data script that starts with ``#!``) serves every path on 8080 with busybox
  ``nc`` in a loop; the instance is the guest kernel's boot id, new on every
  guest boot (watchdog reset, restart elsewhere) and kept by a live migration.
  The user data also arms the guest's watchdog and makes an NMI panic it (see
  ``GUEST_ARM_WATCHDOG``). The pod network uses masquerade binding, which
  KubeVirt needs to live-migrate a VMI on the pod network, and which forwards
  every port to the guest.

The pod workload runs on real kubelets in the lab's cluster (``rto lab up``,
tests/test_lab_kube_cluster.py), in a busybox image. Unverified here
(no KubeVirt components run on these machines): that CirrOS's busybox has
``nc -l -p`` as used, that its kernel has the i6300esb driver, that ``virsh``
in the virt-launcher answers inject-nmi, and the boot times.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DATA_DIR",
    "GUEST_ARM_WATCHDOG",
    "HEALTHZ_PATH",
    "deployment",
    "guest_user_data",
    "virtual_machine",
]

Obj = dict[str, Any]

HEALTHZ_PATH = "/cgi-bin/healthz"
PORT = 8080
DATA_DIR = "/data"  # where a pod with a volume mounts it

# The container's command: draws the instance, writes the CGI, serves it. The
# heredoc is quoted (nothing expanded when it is written): the CGI reads
# $WORKLOAD and $INSTANCE from the environment httpd hands down to it, and
# printf expands the \r\n when it answers. The shell stays PID 1 and stops
# httpd on SIGTERM: PID 1 without a handler ignores it, and every delete or
# eviction waited out the 30 s grace period for the SIGKILL.
_POD_SCRIPT = """set -e
mkdir -p /www/cgi-bin
export INSTANCE="$(cat /proc/sys/kernel/random/uuid)"
cat > /www/cgi-bin/healthz <<'EOF'
@CGI@EOF
chmod +x /www/cgi-bin/healthz
httpd -f -p 8080 -h /www &
trap 'kill "$!"; exit 0' TERM
wait
"""

_HEALTHZ_PLAIN = """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n%s %s\\n' "$WORKLOAD" "$INSTANCE"
"""

# With a volume: the same check as the lab's pod image (cluster/lab/rootfs.py),
# a write read back from the volume. An I/O error answers 503 at once; a
# frozen volume blocks the write, so the probe times out until it thaws. The
# file is named after the CGI's PID, so concurrent probes do not share one
# (they race, and a probe sees another's rm: a false 503). "${$}", not "$$":
# Kubernetes turns "$$" in a container's command into "$".
_HEALTHZ_VOLUME = """#!/bin/sh
f=/data/.healthz.${$}
if echo "${$}" > "$f" 2>/dev/null && read -r got < "$f" 2>/dev/null && [ "$got" = "${$}" ]; then
    rm -f "$f" 2>/dev/null
    printf 'Status: 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\n%s %s\\n' \\
        "$WORKLOAD" "$INSTANCE"
else
    rm -f "$f" 2>/dev/null
    printf 'Status: 503 Service Unavailable\\r\\nContent-Type: text/plain\\r\\n\\r\\n'
    printf '%s %s volume I/O error\\n' "$WORKLOAD" "$INSTANCE"
fi
"""

# busybox nc sends its stdin and then half-closes, so the prober (which reads
# to EOF) gets the whole answer; one connection per loop turn.
_GUEST_USER_DATA = """#!/bin/sh
inst=$(cat /proc/sys/kernel/random/boot_id)
body="{name} $inst"
cat > /tmp/rto-healthz <<EOF
#!/bin/sh
printf 'HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: %d\\r\\n\\r\\n%s\\n' \\
  $((${{#body}} + 1)) "$body"
EOF
chmod +x /tmp/rto-healthz
(while true; do /tmp/rto-healthz | nc -l -p 8080 >/dev/null 2>&1; done) \\
  </dev/null >/dev/null 2>&1 &
"""


def _prefer(labels: dict[str, str] | None) -> Obj | None:
    """Start on the node these labels name, without being pinned to it.

    A nodeSelector would pin the workload: after a drain or a power-off its
    replacement pod (or migrated VMI) could go nowhere else, and the run could
    never recover (seen on the lab's real scheduler: the drained pod stayed
    Pending until the node was uncordoned). A preferred node affinity of the
    highest weight places it there when that node can take it.
    """
    if not labels:
        return None
    expr = [{"key": k, "operator": "In", "values": [v]} for k, v in sorted(labels.items())]
    pref = {"weight": 100, "preference": {"matchExpressions": expr}}
    return {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [pref]}}


def deployment(
    name: str,
    labels: dict[str, str],
    image: str,
    node_selector: dict[str, str] | None,
    volume_host_path: str | None = None,
) -> Obj:
    """One replica of the busybox health server, ``Ready`` once it answers.

    ``volume_host_path``: a directory on the nodes holding this workload's
    storage (``KubeConfig.pod_volume_host_path`` filled in), mounted at
    ``/data`` and written by every health check; None: no volume.
    """
    healthz = _HEALTHZ_PLAIN if volume_host_path is None else _HEALTHZ_VOLUME
    container: Obj = {
        "name": "main",
        "image": image,
        "command": ["sh", "-c", _POD_SCRIPT.replace("@CGI@", healthz)],
        "env": [{"name": "WORKLOAD", "value": name}],
        "ports": [{"containerPort": PORT, "name": "probe"}],
        "readinessProbe": {
            "httpGet": {"path": HEALTHZ_PATH, "port": PORT},
            "periodSeconds": 1,
        },
    }
    pod: Obj = {"affinity": _prefer(node_selector), "containers": [container]}
    if volume_host_path is not None:
        container["volumeMounts"] = [{"name": "data", "mountPath": DATA_DIR}]
        # Directory: the kubelet refuses to start the pod rather than create
        # an empty directory where the storage should be.
        pod["volumes"] = [
            {"name": "data", "hostPath": {"path": volume_host_path, "type": "Directory"}}
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


# The guest half of a "guest hang" (config guest_hang_command, default `virsh
# inject-nmi`): an NMI panics the kernel, which then stays down (panic=0), so
# nothing feeds the i6300esb any more and its reset brings the guest back, as
# in the lab. Pausing the domain instead would stop the watchdog's clock too.
GUEST_ARM_WATCHDOG = """
echo 1 > /proc/sys/kernel/unknown_nmi_panic
echo 0 > /proc/sys/kernel/panic
modprobe i6300esb 2>/dev/null
if [ -e /dev/watchdog ]; then
  (while :; do echo .; sleep 1; done > /dev/watchdog) </dev/null 2>/dev/null &
fi
"""


def guest_user_data(name: str) -> str:
    """The CirrOS user-data script: serve ``<name> <boot id>`` on 8080, arm the
    watchdog, and panic on an NMI (``GUEST_ARM_WATCHDOG``)."""
    return _GUEST_USER_DATA.format(name=name) + GUEST_ARM_WATCHDOG


def data_claim(name: str) -> str:
    """The PVC of a VMI's data disk (``KubeConfig.vmi_data_volume_size``)."""
    return f"{name}-data"


def persistent_volume_claim(name: str, size: str, storage_class: str | None) -> Obj:
    """The data disk's claim: one node at a time (the VMI's), ``size``."""
    spec: Obj = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": data_claim(name)},
        "spec": spec,
    }


def virtual_machine(
    name: str,
    labels: dict[str, str],
    image: str,
    node_selector: dict[str, str] | None,
    eviction_strategy: str,
    data_disk: bool = False,
) -> Obj:
    """A VirtualMachine (runStrategy Always) with an i6300esb watchdog (reset);
    ``data_disk``: also its claim ``data_claim(name)`` as a hotpluggable disk."""
    vm: Obj = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "runStrategy": "Always",
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "affinity": _prefer(node_selector),
                    "evictionStrategy": eviction_strategy,
                    "domain": {
                        "resources": {"requests": {"memory": "128Mi"}},
                        "devices": {
                            "disks": [
                                {"name": "root", "disk": {"bus": "virtio"}},
                                {"name": "cloudinit", "disk": {"bus": "virtio"}},
                            ],
                            "interfaces": [{"name": "default", "masquerade": {}}],
                            "watchdog": {"name": "wd", "i6300esb": {"action": "reset"}},
                        },
                    },
                    "networks": [{"name": "default", "pod": {}}],
                    "volumes": [
                        {"name": "root", "containerDisk": {"image": image}},
                        {
                            "name": "cloudinit",
                            "cloudInitNoCloud": {"userData": guest_user_data(name)},
                        },
                    ],
                },
            },
        },
    }
    if data_disk:
        tpl = vm["spec"]["template"]["spec"]
        # KubeVirt hot-unplugs only volumes marked hotpluggable, on the scsi bus.
        tpl["domain"]["devices"]["disks"].append({"name": "data", "disk": {"bus": "scsi"}})
        tpl["volumes"].append(
            {"name": "data", "persistentVolumeClaim": {"claimName": data_claim(name),
                                                       "hotpluggable": True}}
        )  # fmt: skip
    return vm
