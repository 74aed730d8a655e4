"""`python -m service`: the HTTP server (`service.entry.server`)."""

from service.host import limit_malloc_arenas

if __name__ == "__main__":
    # Before any import starts a thread: glibc fixes the arena bound when the first thread
    # allocates (`service.host.limit_malloc_arenas`).
    limit_malloc_arenas()
    from service.entry.server import main

    main()
