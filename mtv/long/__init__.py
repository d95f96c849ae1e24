"""Long videos: the streaming K-token memory (memory, streaming), backbone token sequences (features) and
UnLoc-style temporal localization (localization). See docs/long_videos.md."""
