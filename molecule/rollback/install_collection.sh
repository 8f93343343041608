#!/usr/bin/env bash
# Molecule's dependency step of the rollback scenario: build the repository as a collection
# (galaxy.yml) and install the tarball the way an operator would, into the scenario's own
# collections path - converge.yml then deploys from it alone (roles_path points nowhere).
#   install_collection.sh PROJECT_DIR EPHEMERAL_DIR
set -euo pipefail
project=$1 ephemeral=$2
galaxy="$(dirname "$(command -v ansible-playbook)")/ansible-galaxy"
# Only the scenario's own path, as an operator's machine would have: the repository's
# ansible.cfg names collections/, where this work tree already *is* quantum.core_kernel, and
# galaxy would answer "already installed" and install nothing.
export ANSIBLE_COLLECTIONS_PATH="$ephemeral/collections"
rm -rf "$ephemeral/dist" "$ephemeral/collections"
mkdir -p "$ephemeral/dist" "$ephemeral/collections"
"$galaxy" collection build --output-path "$ephemeral/dist" "$project"
tarball=("$ephemeral"/dist/quantum-core_kernel-*.tar.gz)
[[ ${#tarball[@]} -eq 1 && -f ${tarball[0]} ]] || { echo "install_collection: no single tarball in $ephemeral/dist" >&2; exit 1; }
"$galaxy" collection install --offline -p "$ephemeral/collections" "${tarball[0]}"
test -f "$ephemeral/collections/ansible_collections/quantum/core_kernel/files/kernel/pyproject.toml"
