# corafs as a Nix package:  nix-build nix/  (not built in CI: no Nix on the CI machine)
{ pkgs ? import <nixpkgs> { } }:
pkgs.python3Packages.buildPythonApplication {
  pname = "corafs";
  version = "0.1.0";
  pyproject = true;
  src = ../.;
  build-system = [ pkgs.python3Packages.setuptools ];
  dependencies = with pkgs.python3Packages; [ numpy h5py xxhash zstandard tqdm pyfuse3 trio ];
  nativeCheckInputs = with pkgs.python3Packages; [ pytestCheckHook hypothesis safetensors torch ];
  # the mount tests need /dev/fuse, which the Nix sandbox does not have
  disabledTestPaths = [ "tests/test_mount_*.py" ];
  meta.description = "A version-controlled store for ML model checkpoints used as a filesystem";
}
