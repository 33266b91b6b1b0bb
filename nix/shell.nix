# Development shell:  nix-shell nix/shell.nix
{ pkgs ? import <nixpkgs> { } }:
pkgs.mkShell {
  packages = [
    pkgs.fuse3 pkgs.pkg-config
    (pkgs.python3.withPackages (ps: with ps; [
      numpy h5py xxhash zstandard tqdm pyfuse3 trio
      pytest hypothesis safetensors torch transformers boto3 moto
    ]))
  ];
}
