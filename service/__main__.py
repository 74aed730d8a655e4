"""`python -m service`: the HTTP server (`service.entry.server`)."""

from service.entry.server import main

if __name__ == "__main__":
    main()
