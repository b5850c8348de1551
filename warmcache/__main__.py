from warmcache.cli import main

main()
