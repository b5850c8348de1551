"""What benches and tests stand up beside the product (as kazoo ships
``kazoo.testing``): simulated hypervisors (``sim``) and a local etcd
cluster (``localetcd``). Not imported by the runtime."""
