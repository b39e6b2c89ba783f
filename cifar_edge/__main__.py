"""`python -m cifar_edge` runs the same command line as `cifar-edge`."""

from cifar_edge.cli import main

if __name__ == "__main__":
    main()
