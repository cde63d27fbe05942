"""Images: where a container's root filesystem comes from.

For now this package holds only `bootstrap`, which makes the base image's
root filesystem offline from the host's static busybox. The content store,
layers, manifests and overlay snapshots join it in chapter 4.
"""
