"""The pipeline: registered tasks and stages, recipes (pure data) and the runner that replays them."""
