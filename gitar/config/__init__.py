"""What the user sets: ground.json and model.json, typed and validated; reading JSON with one-line errors."""
