from gsup.cli import main

main()
