from warmcache_agent.daemon import main

main()
