.PHONY: run test setup
setup:
	scripts/setup
# The main job on the embedded default data.
run: setup
	python3 -m bench.run --suite meta_dataset
# The whole test suite (installs, starts the local SLURM cluster, runs pytest).
test:
	scripts/test
