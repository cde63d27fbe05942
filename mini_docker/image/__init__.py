"""Images: where a container's root filesystem comes from (chapter 4).

An image is a stack of read-only layers plus a config; a container is that
stack with a writable layer on top, mounted with overlayfs. The package, from
the bytes up:

    bootstrap   the base image made offline from the host's static busybox
    reference   names: busybox, localhost:5000/team/app:v1, name@sha256:...
    store       content-addressable blobs, and the tags that name images
    oci         manifests, indexes and configs, OCI and Docker formats
    unpack      applying a layer tar safely, whiteouts included
    layout      save and load: OCI image layout and docker-archive
    snapshot    each layer unpacked once, stacked with overlayfs per container
    container   running an image: the overlay, a bundle, the runtime
    lifecycle   commit, rmi and prune: an image's life after it arrives
"""
