"""The lab as a real Kubernetes cluster: the pinned binaries of scripts/build-kube.sh.

``paths`` holds where things live and the cluster's addresses; ``pki`` makes the
certificates and kubeconfigs; ``hub`` runs etcd, kube-apiserver,
kube-controller-manager and kube-scheduler in the hub namespace; ``node`` runs
one containerd and one kubelet per lab node; ``images`` packs the lab's images
as OCI archives for them; ``kubevirt_crds`` installs KubeVirt's own VM, VMI and
migration CRDs (written by build-kube.sh's crdgen).
"""
