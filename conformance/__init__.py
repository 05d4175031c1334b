"""kvm-conformance: checks that a VMM drives /dev/kvm the way QEMU does."""
