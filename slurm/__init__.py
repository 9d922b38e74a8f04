"""How cells reach a scheduler: submitit executors, resource profiles, the local single-node cluster."""
