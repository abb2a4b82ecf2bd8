"""Backends: the one interface (``cluster.api``) and its implementations.

``cluster.lab`` is the embedded lab (namespaces, runc, libvirt on one machine),
``cluster.kube`` a real Kubernetes + KubeVirt cluster. Only this package imports
third-party SDKs (kubernetes, libvirt, pyroute2).
"""
