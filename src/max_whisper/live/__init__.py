"""Live transcription: the policy (`policy`), the model behind it (`decoder`), a synchronous run
(`session`), the realtime WebSocket (`realtime`) and `max-whisper live` (`cli`)."""
