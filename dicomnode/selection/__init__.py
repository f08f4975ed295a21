"""Selection: which series of a study is measured."""
