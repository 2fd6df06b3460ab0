"""Forward functions of Darknet layer types."""
