"""The notebook layer: magics, commands, displays, the review widget and widgets/. Only it imports IPython."""
