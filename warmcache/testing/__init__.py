"""What benches and tests stand up beside the product (as kazoo ships
``kazoo.testing``): simulated hypervisors (``sim``), a local etcd cluster
(``localetcd``), network namespaces (``netns``, root), a test CA
(``certs``, needs ``cryptography``), the chaos rig (``chaos``), free ports
for servers in other processes (``ports``) and polling with a deadline
(``polling``). Not imported by the runtime."""
