from cerberus.cli import main

main()
