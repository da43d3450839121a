/work/main/samples/.sample.o.d: /root/.cache/rmdev/src/linux-6.12.118-1_deb12u1/.clippy.toml /work/main/samples/sample.rs /work/main/samples/../core/rmdev.rs /work/main/samples/../core/bindings.rs /work/main/samples/../core/logic/src/crc32c.rs /work/main/samples/../core/device.rs /work/main/samples/../core/logic/src/envelope.rs /work/main/samples/../core/logic/src/fsm.rs /work/main/samples/../core/irq.rs /work/main/samples/../core/mdev.rs /work/main/samples/../core/migration.rs /work/main/samples/../core/pci.rs /work/main/samples/../core/logic/src/pci_config.rs /work/main/samples/../core/stream.rs /work/main/samples/../core/../sysfs/migration_version.rs /work/main/samples/../core/user.rs /work/main/samples/../core/logic/src/version.rs /work/main/samples/rmdev_bindings_generated.rs ./rust/libcore.rmeta ./rust/libkernel.rmeta ./rust/libffi.rmeta ./rust/libcompiler_builtins.rmeta ./rust/libmacros.so ./rust/libbindings.rmeta ./rust/libuapi.rmeta ./rust/libbuild_error.rmeta

/work/main/samples/sample.o: /root/.cache/rmdev/src/linux-6.12.118-1_deb12u1/.clippy.toml /work/main/samples/sample.rs /work/main/samples/../core/rmdev.rs /work/main/samples/../core/bindings.rs /work/main/samples/../core/logic/src/crc32c.rs /work/main/samples/../core/device.rs /work/main/samples/../core/logic/src/envelope.rs /work/main/samples/../core/logic/src/fsm.rs /work/main/samples/../core/irq.rs /work/main/samples/../core/mdev.rs /work/main/samples/../core/migration.rs /work/main/samples/../core/pci.rs /work/main/samples/../core/logic/src/pci_config.rs /work/main/samples/../core/stream.rs /work/main/samples/../core/../sysfs/migration_version.rs /work/main/samples/../core/user.rs /work/main/samples/../core/logic/src/version.rs /work/main/samples/rmdev_bindings_generated.rs ./rust/libcore.rmeta ./rust/libkernel.rmeta ./rust/libffi.rmeta ./rust/libcompiler_builtins.rmeta ./rust/libmacros.so ./rust/libbindings.rmeta ./rust/libuapi.rmeta ./rust/libbuild_error.rmeta

/root/.cache/rmdev/src/linux-6.12.118-1_deb12u1/.clippy.toml:
/work/main/samples/sample.rs:
/work/main/samples/../core/rmdev.rs:
/work/main/samples/../core/bindings.rs:
/work/main/samples/../core/logic/src/crc32c.rs:
/work/main/samples/../core/device.rs:
/work/main/samples/../core/logic/src/envelope.rs:
/work/main/samples/../core/logic/src/fsm.rs:
/work/main/samples/../core/irq.rs:
/work/main/samples/../core/mdev.rs:
/work/main/samples/../core/migration.rs:
/work/main/samples/../core/pci.rs:
/work/main/samples/../core/logic/src/pci_config.rs:
/work/main/samples/../core/stream.rs:
/work/main/samples/../core/../sysfs/migration_version.rs:
/work/main/samples/../core/user.rs:
/work/main/samples/../core/logic/src/version.rs:
/work/main/samples/rmdev_bindings_generated.rs:
./rust/libcore.rmeta:
./rust/libkernel.rmeta:
./rust/libffi.rmeta:
./rust/libcompiler_builtins.rmeta:
./rust/libmacros.so:
./rust/libbindings.rmeta:
./rust/libuapi.rmeta:
./rust/libbuild_error.rmeta:

# env-dep:CLIPPY_ARGS
# env-dep:CLIPPY_CONF_DIR=/root/.cache/rmdev/src/linux-6.12.118-1_deb12u1
# env-dep:RMDEV_BINDINGS_GENERATED=/work/main/samples/rmdev_bindings_generated.rs
# env-dep:RMDEV_VENDOR=rmdev_sample
