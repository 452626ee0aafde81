from gsup.main import main

main()
