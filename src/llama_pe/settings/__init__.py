"""The settings: params.yaml read as DVC writes it, checked before any stage runs. No torch, pandas or DVC here."""
