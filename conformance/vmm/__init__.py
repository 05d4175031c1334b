"""A small, real VMM core: Kvm -> Vm -> Vcpu over /dev/kvm, guest memory, exits and devices."""
