"""The shared archive: content-addressed blobs on disk and a SQL index of what they hold."""
