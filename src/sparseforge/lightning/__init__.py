"""Lightning glue: callbacks (task loop, RNG state, sparsity), loggers, checkpoint IO."""
