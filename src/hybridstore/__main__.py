from hybridstore.cli import main

main()
