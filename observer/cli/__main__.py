from observer.cli import main

main()
