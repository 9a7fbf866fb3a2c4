"""What the user sets: ground.json, typed and validated; reading JSON (model.json too) with one-line errors."""
