/work/main/vendors/.igbvf.o.d: /root/.cache/rmdev/src/linux-6.12.118-1_deb12u1/.clippy.toml /work/main/vendors/igbvf.rs /work/main/vendors/../core/rmdev.rs /work/main/vendors/../core/bindings.rs /work/main/vendors/../core/logic/src/crc32c.rs /work/main/vendors/../core/device.rs /work/main/vendors/../core/logic/src/envelope.rs /work/main/vendors/../core/logic/src/fsm.rs /work/main/vendors/../core/irq.rs /work/main/vendors/../core/mdev.rs /work/main/vendors/../core/migration.rs /work/main/vendors/../core/pci.rs /work/main/vendors/../core/logic/src/pci_config.rs /work/main/vendors/../core/stream.rs /work/main/vendors/../core/../sysfs/migration_version.rs /work/main/vendors/../core/user.rs /work/main/vendors/../core/logic/src/version.rs /work/main/vendors/rmdev_bindings_generated.rs ./rust/libcore.rmeta ./rust/libkernel.rmeta ./rust/libffi.rmeta ./rust/libcompiler_builtins.rmeta ./rust/libmacros.so ./rust/libbindings.rmeta ./rust/libuapi.rmeta ./rust/libbuild_error.rmeta

/work/main/vendors/igbvf.o: /root/.cache/rmdev/src/linux-6.12.118-1_deb12u1/.clippy.toml /work/main/vendors/igbvf.rs /work/main/vendors/../core/rmdev.rs /work/main/vendors/../core/bindings.rs /work/main/vendors/../core/logic/src/crc32c.rs /work/main/vendors/../core/device.rs /work/main/vendors/../core/logic/src/envelope.rs /work/main/vendors/../core/logic/src/fsm.rs /work/main/vendors/../core/irq.rs /work/main/vendors/../core/mdev.rs /work/main/vendors/../core/migration.rs /work/main/vendors/../core/pci.rs /work/main/vendors/../core/logic/src/pci_config.rs /work/main/vendors/../core/stream.rs /work/main/vendors/../core/../sysfs/migration_version.rs /work/main/vendors/../core/user.rs /work/main/vendors/../core/logic/src/version.rs /work/main/vendors/rmdev_bindings_generated.rs ./rust/libcore.rmeta ./rust/libkernel.rmeta ./rust/libffi.rmeta ./rust/libcompiler_builtins.rmeta ./rust/libmacros.so ./rust/libbindings.rmeta ./rust/libuapi.rmeta ./rust/libbuild_error.rmeta

/root/.cache/rmdev/src/linux-6.12.118-1_deb12u1/.clippy.toml:
/work/main/vendors/igbvf.rs:
/work/main/vendors/../core/rmdev.rs:
/work/main/vendors/../core/bindings.rs:
/work/main/vendors/../core/logic/src/crc32c.rs:
/work/main/vendors/../core/device.rs:
/work/main/vendors/../core/logic/src/envelope.rs:
/work/main/vendors/../core/logic/src/fsm.rs:
/work/main/vendors/../core/irq.rs:
/work/main/vendors/../core/mdev.rs:
/work/main/vendors/../core/migration.rs:
/work/main/vendors/../core/pci.rs:
/work/main/vendors/../core/logic/src/pci_config.rs:
/work/main/vendors/../core/stream.rs:
/work/main/vendors/../core/../sysfs/migration_version.rs:
/work/main/vendors/../core/user.rs:
/work/main/vendors/../core/logic/src/version.rs:
/work/main/vendors/rmdev_bindings_generated.rs:
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
# env-dep:RMDEV_BINDINGS_GENERATED=/work/main/vendors/rmdev_bindings_generated.rs
# env-dep:RMDEV_VENDOR=rmdev_igbvf
