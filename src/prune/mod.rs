//! Pruning dense weights into the encodings of the format (tiles, rows, columns, elements).
