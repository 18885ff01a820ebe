"""vaefast's benchmarks: each fused op against the eager reference (vaefast.ops.reference) and that reference
under torch.compile. Run `python -m benchmarks.run --help`; benchmarks/README.md says what each figure means."""
